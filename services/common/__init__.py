"""What every service process shares: configuration, database engines, server lifecycle."""
