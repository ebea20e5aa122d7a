DROP TABLE kv_items;
