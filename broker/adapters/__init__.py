"""Drop-ins for agent frameworks: every call a framework's model makes is a libos tool call of
one process, with its capabilities, approvals and audit.

Each framework's adapter is a module of its own, imported only when it is used, and needs its
framework's extra (`pip install 'libos[pydantic-ai]'`, `[openai-agents]`, `[langchain]` or
`[langgraph]`, `[smolagents]`). All of them call through `gate.ToolGate`, which hands an
approval request to the framework's own human-in-the-loop and its answer back to the kernel.
"""
