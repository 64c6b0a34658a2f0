"""The SQL store: schema, migrations, engines, and the repository functions that read and write it."""
