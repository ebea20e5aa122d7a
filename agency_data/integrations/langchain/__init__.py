"""LangChain on agency-data (extra ``[langchain]``): a ``VectorStore`` over a collection
(:class:`AgencyVectorStore`), a durable ``ByteStore`` (:class:`AgencyByteStore`) and an LLM
cache on the layer's cache (:class:`AgencyLLMCache`)."""

from agency_data.integrations.langchain.bytestore import AgencyByteStore
from agency_data.integrations.langchain.cache import AgencyLLMCache
from agency_data.integrations.langchain.vectorstore import AgencyVectorStore

__all__ = ["AgencyByteStore", "AgencyLLMCache", "AgencyVectorStore"]
