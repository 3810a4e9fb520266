"""Backends: the service-level seam every dialect calls (chat, generate, embed, the model catalog) and the local one."""
