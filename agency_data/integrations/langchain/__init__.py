"""LangChain on agency-data (extra ``[langchain]``): a ``VectorStore`` over a collection
(:class:`AgencyVectorStore`), a durable ``ByteStore`` (:class:`AgencyByteStore`) and an LLM
cache on the layer's cache (:class:`AgencyLLMCache`)."""

try:
    import langchain_core  # noqa: F401 - only to say which extra is missing
except ImportError as exc:  # pragma: no cover - the message is the point
    raise ImportError(
        "agency_data.integrations.langchain needs langchain-core: "
        "pip install 'agency-data[langchain]'"
    ) from exc

from agency_data.integrations.langchain.bytestore import AgencyByteStore
from agency_data.integrations.langchain.cache import AgencyLLMCache
from agency_data.integrations.langchain.vectorstore import AgencyVectorStore

__all__ = ["AgencyByteStore", "AgencyLLMCache", "AgencyVectorStore"]
