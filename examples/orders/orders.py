"""Orders: look up each customer's latest order and refund it.

Written for issue 30 as a task of another kind than the maze: the value to copy is a number (several
tokens, never seen in training before), it comes from a lookup tool's answer rather than the task, and
the answer lists two orders with the latest one marked. It keeps ToolEnv's default noisy_action (random
calls whose arguments the last observation shows). A refund of the wrong order cannot be undone: the
episode fails. Horizon T is the number of customers; a correct episode takes 2T calls.
"""

from __future__ import annotations

import random

from sftbc import BadCall, Message, ToolEnv, tool_call

CUSTOMERS = ("ana", "bob", "cy", "dee", "eve", "fay", "gus", "hal", "ivy", "jo", "kim", "lu")
MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")


class Orders(ToolEnv):
    def start(self, seed: int) -> str:
        rng = random.Random(f"orders-{self.horizon}-{seed}")
        self.queue = []  # per customer: (name, {order: month index}, latest order)
        for _ in range(self.horizon):
            ids = rng.sample(range(10_000, 100_000), 2)
            months = sorted(rng.sample(range(12), 2))
            orders = dict(zip(ids, months))
            self.queue.append((rng.choice(CUSTOMERS), orders, ids[1]))
        self.at, self.found = 0, False
        return f"Refund the latest order of {self.horizon} customers, one after another. First: \"{self.queue[0][0]}\"."

    def find(self, customer: str) -> str:
        """List a customer's orders.

        Args:
            customer: the customer's name
        """
        name, orders, latest = self.queue[self.at]
        if customer != name:
            raise BadCall(f"error: {customer[:20]!r} is not the customer to serve now")
        self.found = True
        listed = sorted(orders.items())  # by number, not by date: which one is latest must be read
        shown = ", ".join(f"{o} ({MONTHS[m]}{', latest' if o == latest else ''})" for o, m in listed)
        return f"orders of {name}: {shown}."

    def refund(self, order: int) -> str:
        """Refund one order.

        Args:
            order: the order number
        """
        name, orders, latest = self.queue[self.at]
        if not self.found:
            raise BadCall("error: find the customer's orders first")
        if order != latest:
            self.finish(False)
            return f"refunded {order}, which was not {name}'s latest order."
        self.at, self.found = self.at + 1, False
        if self.at == self.horizon:
            self.finish(True)
            return f"refunded {order}. All done."
        return f"refunded {order}. Next: \"{self.queue[self.at][0]}\"."

    def oracle_action(self) -> Message:
        name, _, latest = self.queue[self.at]
        return tool_call("refund", order=latest) if self.found else tool_call("find", customer=name)
