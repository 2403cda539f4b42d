/* textenc/prompt.c — placeholder: being written (see the issue tracker). */
typedef int stipple_placeholder_prompt;
