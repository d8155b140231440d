"""golf_core: the package behind the golf-recurrence report.

Depth recurrence (U-Net skips, looped blocks, mini recurrence, parallel residual lanes) in the
tiny GPTs of the OpenAI parameter-golf challenge. Importing does nothing: no I/O, no process
groups, no device choice.
"""

__version__ = "0.1.0"
