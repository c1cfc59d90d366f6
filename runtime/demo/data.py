"""The demo's datanets: three small question-and-answer collections (legal, medical, finance), several contributors
each, and the questions the agent asks. Contributors are named people with deterministic keys."""

from __future__ import annotations

from dataclasses import dataclass

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak

__all__ = ["DATANETS", "QUESTIONS", "DemoDatanet", "Entry", "contributor_account"]


@dataclass(frozen=True)
class Entry:
    contributor: str  # a name; its account is contributor_account(name)
    question: str
    answer: str

    @property
    def text(self) -> str:
        """The contribution as stored, trained on and registered: the question and its answer."""
        return f"Q: {self.question} A: {self.answer}"


@dataclass(frozen=True)
class DemoDatanet:
    name: str
    adapter: str
    description: str  # the adapter's description: what the agent's router reads
    entries: tuple[Entry, ...]


DATANETS = (
    DemoDatanet(
        "legal",
        "legal-expert",
        "Legal specialist for contract law, land and property sales, leases, landlords and tenants, wills and "
        "inheritance, trained on the legal datanet",
        (
            Entry("alice", "Is a verbal agreement to sell land enforceable?",
                  "No. The statute of frauds requires a contract for the sale of land to be in writing and signed "
                  "by the party to be charged."),
            Entry("bob", "Can a landlord keep the security deposit for normal wear and tear?",
                  "No. A landlord may deduct only for damage beyond normal wear and tear and must list the "
                  "deductions in writing."),
            Entry("carol", "What makes a will valid?",
                  "A valid will must be in writing, signed by the testator and witnessed by two adults who do not "
                  "inherit under it."),
            Entry("alice", "What is consideration in a contract?",
                  "Consideration is something of value that each party gives to the other, such as money, goods or "
                  "a promise to act."),
        ),
    ),
    DemoDatanet(
        "medical",
        "medical-expert",
        "Medical specialist for symptoms, fever, heart rate, blood pressure, vaccines, boosters and home treatment, "
        "trained on the medical datanet",
        (
            Entry("dan", "What is a normal resting heart rate for adults?",
                  "A normal resting heart rate for adults is between sixty and one hundred beats per minute, and "
                  "athletes often sit lower."),
            Entry("erin", "How should a mild fever be treated at home?",
                  "Rest, drink plenty of fluids and take paracetamol as directed, and see a doctor if the fever "
                  "lasts more than three days."),
            Entry("frank", "What blood pressure counts as high?",
                  "Blood pressure is high when it stays at or above one hundred thirty over eighty millimetres of "
                  "mercury on repeated readings."),
            Entry("erin", "How often should adults get a tetanus booster?",
                  "Adults should get a tetanus booster every ten years, or sooner after a deep or dirty wound."),
        ),
    ),
    DemoDatanet(
        "finance",
        "finance-expert",
        "Finance specialist for interest, compound interest, bonds, index funds, stocks, inflation, savings and "
        "investing, trained on the finance datanet",
        (
            Entry("grace", "How does compound interest work?",
                  "Compound interest pays interest on the principal and on the interest already earned, so savings "
                  "grow faster every year."),
            Entry("heidi", "Why do bond prices fall when interest rates rise?",
                  "New bonds pay the higher rate, so older bonds with lower coupons must sell at a discount to "
                  "compete."),
            Entry("ivan", "What is an index fund?",
                  "An index fund holds every stock in a market index, giving broad diversification at a very low "
                  "cost."),
            Entry("grace", "What does inflation do to cash savings?",
                  "Inflation lowers the purchasing power of cash, so savings that earn less than inflation lose real "
                  "value."),
        ),
    ),
)  # fmt: skip

QUESTIONS = (
    "Is a verbal agreement to sell land enforceable?",
    "How should a mild fever be treated at home?",
    "Why do bond prices fall when interest rates rise?",
    "What makes a will valid?",
    "What is an index fund?",
)
"""What the agent is asked, in order; each is answered by the adapter of its datanet."""


def contributor_account(name: str) -> LocalAccount:
    """A deterministic demo key for a contributor (public: never use it on a real network)."""
    return Account.from_key(keccak(text=f"loraledger demo contributor {name}"))
