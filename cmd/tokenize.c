/* tokenize.c — `stipple tokenize [-m MODEL] [--json] PROMPT`: the CLIP token
 * ids of a prompt, BOS ... EOS, untruncated, on one line (DESIGN.md §4).
 *
 * The ids are the reference tokenizer's (openai CLIP SimpleTokenizer, which
 * every CLIP text encoder of SD1 / SD2 / SDXL shares), taken literally: the
 * A1111 prompt syntax is not applied here. -m is accepted for symmetry with
 * the other commands and must name an existing file or folder; it does not
 * change the ids. --json prints {"ids": [...], "tokens": [...]} with the BPE
 * strings in CLIP's byte-to-unicode spelling ("cat</w>").
 */
#include "cmd.h"

#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "textenc.h"

static const char *tokenize_usage =
    "usage: stipple tokenize [-m MODEL] [--json] PROMPT\n"
    "\n"
    "Print the CLIP token ids of PROMPT (BOS 49406 ... EOS 49407), space\n"
    "separated on one line, untruncated. The prompt is taken literally (no\n"
    "A1111 weights or BREAK).\n"
    "\n"
    "  -m, --model MODEL   model file or folder (all CLIP models share the ids)\n"
    "      --json          print {\"ids\": [...], \"tokens\": [...]} instead\n";

static void json_string(const char *s)
{
    putchar('"');
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') printf("\\%c", *p);
        else if (*p < 0x20) printf("\\u%04x", *p);
        else putchar(*p);
    }
    putchar('"');
}

int cmd_tokenize(int argc, char **argv)
{
    const char *model = NULL, *prompt = NULL;
    int json = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(tokenize_usage, stdout);
            return EXIT_OK;
        } else if (!strcmp(a, "--json")) {
            json = 1;
        } else if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
            if (i + 1 >= argc) return cmd_usage_error("tokenize: %s needs a model path", a);
            model = argv[++i];
        } else if (!strcmp(a, "--")) {
            if (i + 1 < argc && !prompt) prompt = argv[++i];
            if (i + 1 < argc) return cmd_usage_error("tokenize: one prompt expected, got also \"%s\"", argv[i + 1]);
            break;
        } else if (a[0] == '-' && a[1]) {
            return cmd_usage_error("tokenize: unknown option %s (see stipple tokenize --help)", a);
        } else if (prompt) {
            return cmd_usage_error("tokenize: one prompt expected, got also \"%s\" (quote the prompt)", a);
        } else {
            prompt = a;
        }
    }
    if (!prompt) return cmd_usage_error("tokenize: no prompt (usage: stipple tokenize [-m MODEL] [--json] PROMPT)");
    cm_error err = {0};
    if (model) {
        struct stat st;
        if (stat(model, &st) != 0) {
            cm_error_set(&err, CM_ERR_IO, "%s: no such model file or folder", model);
            return cmd_fail(&err);
        }
    }
    te_tokenizer *tok = te_tokenizer_create(&err);
    if (!tok) return cmd_fail(&err);
    int32_t *ids = NULL;
    int n = 0;
    if (te_tokenize(tok, prompt, &ids, &n, &err) != CM_OK) {
        te_tokenizer_free(tok);
        return cmd_fail(&err);
    }
    if (json) {
        printf("{\"ids\": [%d", TE_BOS);
        for (int i = 0; i < n; i++) printf(", %d", ids[i]);
        printf(", %d], \"tokens\": [", TE_EOS);
        json_string(te_token_str(tok, TE_BOS));
        for (int i = 0; i < n; i++) {
            printf(", ");
            json_string(te_token_str(tok, ids[i]));
        }
        printf(", ");
        json_string(te_token_str(tok, TE_EOS));
        printf("]}\n");
    } else {
        printf("%d", TE_BOS);
        for (int i = 0; i < n; i++) printf(" %d", ids[i]);
        printf(" %d\n", TE_EOS);
    }
    cm_free(ids);
    te_tokenizer_free(tok);
    if (fflush(stdout) != 0) {
        cm_error_set(&err, CM_ERR_IO, "tokenize: writing to stdout failed");
        return cmd_fail(&err);
    }
    return EXIT_OK;
}
