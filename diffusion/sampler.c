/* diffusion/sampler.c — placeholder: being written (see the issue tracker). */
typedef int stipple_placeholder_sampler;
