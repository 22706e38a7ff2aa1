"""Authentication facts for ``require_authenticated`` lists: SPF (pyspf) and DKIM (dkimpy)
checked by listgate over its own configured resolver (dnspython), or the results of a
trusted milter before listgate, read from its ``Authentication-Results:`` header (authres).
The rule that uses them is pure and lives in ``listgate.decision.auth``."""

from listgate.auth.authenticator import Authenticator

__all__ = ["Authenticator"]
