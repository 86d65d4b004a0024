"""The receiving server: jobs, verified sparse images, restore, exports, XAPI."""
