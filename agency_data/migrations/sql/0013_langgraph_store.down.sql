-- The store's collections (emb_<store name>) are collections like any other: drop them with
-- drop_collection if they should go too.
DROP TABLE IF EXISTS langgraph_store;
