"""The terminal's state reset before a prompt is drawn: what the command wrote before cannot
restyle, hide or squeeze the panel.

The command writes to the same terminal, and a terminal keeps modes: concealed or invisible text
(SGR 8, a palette where white is black), a line-drawing character set (ESC ( 0, SO) that turns
letters into frame pieces, insert mode, a one-line scroll region that leaves only the panel's
last line on the screen, reverse video, mouse and focus reports that type on their own. Each is
switched back to the default before the panel (terminals ignore the ones they do not know). The
command's own modes are not restored afterwards: a full-screen program redraws, or sets them again.
"""

from __future__ import annotations

RESET = "".join((
    "\x1b[0m",  # attributes: no conceal, no colours of the command's
    "\x1b(B\x1b)B\x0f",  # G0 and G1 are ASCII, G0 in use
    "\x1b[4l\x1b[?5l\x1b[?6l\x1b[?7h\x1b[?25h",  # replace mode, normal video, no origin mode, wrap, cursor
    "\x1b7\x1b[r\x1b8",  # the whole screen scrolls again; the cursor stays where it is
    "\x1b]104\x1b\\\x1b]110\x1b\\\x1b]111\x1b\\",  # the palette and the default colours back
    "\x1b[?1000l\x1b[?1002l\x1b[?1003l\x1b[?1004l\x1b[?1005l\x1b[?1006l\x1b[?1015l",  # no mouse, no focus reports
))
