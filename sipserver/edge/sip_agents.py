"""The SIP side of the configured agents, indexed for the per-request lookups of the edge.

Plain dicts built once per configuration: the config's own lookups normalise numbers and go
through pydantic attribute access, which costs microseconds per call on a path that runs for
every REGISTER and INVITE.
"""

from __future__ import annotations

from sipserver.config import Agent, Config
from sipserver.registrar.acl import AllowList

__all__ = ["SipAgents"]


class SipAgents:
    """Agents that take SIP (``sip.enabled``): by user name, SIP number and AI Listens number,
    with their CIDR allow-lists.

    Args:
        config: the validated configuration (agents and the numbering plan).
    """

    def __init__(self, config: Config) -> None:
        self.enabled: list[Agent] = [a for a in config.agents if a.sip.enabled]
        """The agents that take SIP, in configuration order."""
        self._acls = {a.slug: AllowList(a.sip.allowed_ips) for a in self.enabled}
        self.by_username: dict[str, Agent] = {}
        """Agents by SIP user name (the digest user and the AOR user part)."""
        self._by_number: dict[str, Agent] = {}
        self._listens_by_number: dict[str, Agent] = {}
        self._normalize = config.server.sip.numbering.normalize
        for agent in self.enabled:
            if agent.sip.username:
                self.by_username[agent.sip.username] = agent
            for number in agent.sip.numbers:
                self._by_number[number] = agent
                self._by_number[self._normalize(number)] = agent
            # AI Listens numbers take calls from the agent's PBX (same allow-list and
            # credentials); they are never registration addresses.
            for number in agent.listens.numbers if agent.listens.enabled else ():
                self._listens_by_number[number] = agent
                self._listens_by_number[self._normalize(number)] = agent

    def allows(self, agent: Agent, host: str) -> bool:
        """Whether ``agent``'s allow-list admits the source address ``host``."""
        return self._acls[agent.slug].allows(host)

    def allowing(self, host: str) -> list[Agent]:
        """The agents whose allow-lists admit ``host``."""
        return [a for a in self.enabled if self._acls[a.slug].allows(host)]

    def for_number(self, number: str) -> Agent | None:
        """The agent whose SIP number ``number`` is, through the numbering plan (or None)."""
        return self._by_number.get(number) or self._by_number.get(self._normalize(number))

    def listens_for_number(self, number: str) -> Agent | None:
        """The agent one of whose AI Listens numbers ``number`` is (or None)."""
        found = self._listens_by_number.get(number)
        return found or self._listens_by_number.get(self._normalize(number))

    def for_aor(self, user: str) -> Agent | None:
        """The agent an address of record's user part names: its user name or a number."""
        agent = self.by_username.get(user) or self._by_number.get(user)
        if agent is None:
            agent = self._by_number.get(self._normalize(user))
        return agent
