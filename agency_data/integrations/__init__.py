"""agency-data as the storage of other frameworks: LangChain (``langchain``) and LangGraph
(``langgraph``). Each needs its extra (``pip install 'agency-data[langchain]'``); nothing here is
imported by the core package."""
