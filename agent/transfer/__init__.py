"""Transfer: capture (read a disk's planned chunks, send them with retries) and restore
(a sealed image back onto a disk), the link and the client that carry chunks, the
progress they report, and their `p2v-agent capture`/`restore` subcommands."""
