"""The Frontend plan: what the seed configures by hand on a Frontend, computed from the inventory.

Seed sources (``seed/howto-hosting-with-v10.txt``):

- "Frontend/NAT": inbound NAT maps for HTTPS and LDAPS to each customer PBX, 2 per customer,
  about 290 per Frontend, about 20 reserved for shared services (Metadir, fax, reporting), so
  about 135 customers. The numbering scheme: 4-digit external ports, the first digit the service
  (8 HTTPS, 9 LDAPS to the PBX), the other three the last octet of the PBX's internal address:
  ``9007 -> 10.0.0.7:636``.
- "Kerberos": the shared UDP maps 7088/7089/7464/7465 to the Kerberos servers.
- "Frontend/NAT": a UDP NAT port range at least as large as the number of customer PBXs, not
  overlapping the UDP-RTP range (16384-32767 by default).
- "Frontend/PBX" and "Configuration of customer related objects": one SessionBorder object per
  potential CPE: Long Name and "Registration to internal PBX" name = CPE id, "Registration from
  external" name = hardware id, Password = the customer registration password, PBX Password
  ticked.
- "Alternate RAS port": the Frontend listens for RAS on the port the phones use
  (``config add H323 /ras-port-alt xxxx``).

**The encoding rule.** Three digits hold 000-255, so every IPv4 last octet fits and the port stays
at most 9255. What the scheme cannot encode: an address that is not an IPv4 address (a host
name, IPv6), and two customer PBXs of one Frontend whose addresses share the last octet
(10.0.0.7 and 10.0.1.7 would both be 9007: one customer's phones would reach the other's PBX).
So the customer PBXs of one Frontend need distinct last octets, in practice one /24 per Frontend.

Everything here is a plain function of an :class:`Inventory` and the settings; no I/O.
"""

from services.frontend.plan.build import build_plan, scheme_port
from services.frontend.plan.model import FrontendPlan, NatMap, UnknownFrontend
from services.frontend.plan.render import plan_csv, plan_json, plan_text

# What the plan's callers use. Its parts (customer plans, SessionBorder objects, the budget,
# violations) and the update variables it reads are in .model, the CSV columns in .render.
__all__ = [
    "FrontendPlan",
    "NatMap",
    "UnknownFrontend",
    "build_plan",
    "plan_csv",
    "plan_json",
    "plan_text",
    "scheme_port",
]
