"""The Anthropic Messages API (``POST /v1/messages``) on the same internal request path as the
OpenAI chat route: translated into a chat request (router/anthropic/translate.py), answered in
Anthropic's own body, SSE events and error shape (router/anthropic/respond.py)."""
