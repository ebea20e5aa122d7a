DROP TABLE langgraph_checkpoint_writes;
DROP TABLE langgraph_checkpoint_blobs;
DROP TABLE langgraph_checkpoints;
