//! The soft-RoCE QEMU test bed.
