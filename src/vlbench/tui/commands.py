"""The command palette's provider (ctrl+p): every command of keys.py, plus themes and experiment types."""

from __future__ import annotations

from textual.command import DiscoveryHit, Hit, Hits, Provider


class VlbenchCommands(Provider):
    async def discover(self) -> Hits:
        for title, help_text, callback in self.app.palette_commands():
            yield DiscoveryHit(title, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, help_text, callback in self.app.palette_commands():
            score = matcher.match(f"{title} {help_text}")
            if score > 0:
                yield Hit(score, matcher.highlight(title), callback, help=help_text)
