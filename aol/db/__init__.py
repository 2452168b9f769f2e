"""Everything that talks to PostgreSQL: connections, the SQL catalogue, migrations."""
