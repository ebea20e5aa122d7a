DROP TABLE memory_links;
DROP TABLE memory_history;
DROP TABLE memories;
