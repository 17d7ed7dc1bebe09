"""aiosmtpd - an asyncio based SMTP server."""

__version__ = "1.5.0"
