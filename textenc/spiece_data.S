/* spiece_data.S — the T5 SentencePiece model (spiece.model, Apache-2.0,
 * see LICENSE.t5-spiece.Apache-2.0) built into the binary, so the T5
 * tokenizer needs no file at run time. Symbols (see t5.c):
 *   te_spiece_model      first byte
 *   te_spiece_model_end  one past the last byte
 * TE_SPIECE_PATH is the absolute path of textenc/spiece.model (meson). */
    .section .rodata
    .balign 16
    .globl te_spiece_model
    .globl te_spiece_model_end
te_spiece_model:
    .incbin TE_SPIECE_PATH
te_spiece_model_end:
    .byte 0
    .section .note.GNU-stack,"",@progbits
