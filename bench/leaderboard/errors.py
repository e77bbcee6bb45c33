"""The one error the leaderboard raises for things the user can fix (bad reported.csv, ambiguous records)."""


from bench.errors import UserError


class LeaderboardError(UserError, ValueError):
    """A leaderboard cannot be built honestly from these inputs; the message says which file or run and why."""
