"""LangChain integration: adapter tools, toolkit, chat model and a trace callback."""
