"""aiosmtpd - an asyncio based SMTP server."""

__version__ = "1.4.6"
