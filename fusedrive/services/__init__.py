"""What runs beside a mount: the control socket and its commands, the hub, metrics, share links."""
