"""From transactions to applied batches: domain events, the assembler and its spill, the
batch model and its fold, the apply pipeline and the daemon's loop.
"""
