// spm_shim.cc — extern "C" wrapper over Debian's libsentencepiece-dev
// (sentencepiece::SentencePieceProcessor), see spm_shim.h. The T5
// tokenizer of transformers (slow T5Tokenizer, legacy=True) is this
// processor's Encode on the text; EOS, padding and truncation are done by
// the C caller (textenc/t5.c).
#include "spm_shim.h"

#include <sentencepiece_processor.h>

#include <cstdio>
#include <new>
#include <string>
#include <vector>

struct te_spm {
    sentencepiece::SentencePieceProcessor sp;
};

static void set_msg(char *msg, size_t msg_n, const char *what, const std::string &why)
{
    if (!msg || msg_n == 0) return;
    std::snprintf(msg, msg_n, "%s: %s", what, why.c_str());
    for (char *p = msg; *p; p++)
        if (*p == '\n' || *p == '\r') *p = ' ';
}

extern "C" te_spm *te_spm_create(const void *model, size_t n, char *msg, size_t msg_n)
{
    te_spm *s = nullptr;
    try {
        s = new te_spm;
        auto st = s->sp.LoadFromSerializedProto(
            absl::string_view(static_cast<const char *>(model), n));
        if (!st.ok()) {
            set_msg(msg, msg_n, "sentencepiece model", st.ToString());
            delete s;
            return nullptr;
        }
        return s;
    } catch (const std::exception &e) {
        set_msg(msg, msg_n, "sentencepiece model", e.what());
    } catch (...) {
        set_msg(msg, msg_n, "sentencepiece model", "unknown C++ exception");
    }
    delete s;
    return nullptr;
}

extern "C" void te_spm_free(te_spm *s) { delete s; }

extern "C" int te_spm_piece_count(const te_spm *s)
{
    try {
        return s->sp.GetPieceSize();
    } catch (...) {
        return 0;
    }
}

extern "C" int te_spm_piece_id(const te_spm *s, const char *piece)
{
    try {
        int id = s->sp.PieceToId(piece);
        if (id == s->sp.unk_id() && s->sp.IdToPiece(id) != piece) return -1;
        return id;
    } catch (...) {
        return -1;
    }
}

extern "C" int64_t te_spm_encode(const te_spm *s, const char *text, size_t n, int32_t *ids,
                                 int64_t cap, char *msg, size_t msg_n)
{
    try {
        std::vector<int> v;
        auto st = s->sp.Encode(absl::string_view(text, n), &v);
        if (!st.ok()) {
            set_msg(msg, msg_n, "T5 tokenizer", st.ToString());
            return -1;
        }
        for (size_t i = 0; i < v.size() && (int64_t)i < cap; i++) ids[i] = v[i];
        return (int64_t)v.size();
    } catch (const std::exception &e) {
        set_msg(msg, msg_n, "T5 tokenizer", e.what());
    } catch (...) {
        set_msg(msg, msg_n, "T5 tokenizer", "unknown C++ exception");
    }
    return -1;
}
