"""Compiler options shared by every lazypull target."""

LAZYPULL_COPTS = [
    "-Wall",
    "-Wextra",
    "-Werror",
]
