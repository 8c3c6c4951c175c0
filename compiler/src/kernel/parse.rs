//! Kernel IR text → `KernelProgram` (written below).
