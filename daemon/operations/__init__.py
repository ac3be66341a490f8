"""Operations: the admin actions every face shares, declared once in one table
(docs/architecture.md)."""
