"""loom-core's import path `loom.schemas.state`, kept as a re-export."""
