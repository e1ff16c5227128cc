-- The vector store needs pgvector; the ledger, budgets and templates do not.
CREATE EXTENSION IF NOT EXISTS vector;
