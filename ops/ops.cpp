// placeholder: the op dispatch lands with the CPU kernels
