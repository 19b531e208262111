"""The marks the page puts before a status line, in one place.

Plain symbols that ordinary text fonts carry (DejaVu Sans has every one), not emoji: a check-mark or cross-mark
emoji needs a colour-emoji font, and a browser without one (Debian's chromium on a bare machine, many Linux
desktops) shows an empty box where the page meant "fine" or "wrong". tests/test_ui.py checks that the
package's sources hold no emoji.
"""

OK = "✔"
PROBLEM = "✘"
WARNING = "⚠"
INFO = "ℹ"
PENDING = "◷"
STOPPING = "■"
