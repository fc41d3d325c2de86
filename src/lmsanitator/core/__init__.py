"""The bottom layer: errors, atomic file output, the architecture table and the runtime (threads)."""
