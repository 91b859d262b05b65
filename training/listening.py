"""Listening checks: does a companion reply listen, or lecture, wander, or speak for someone else?

Deterministic stdlib heuristics behind the listening shares of ``evaluate.py``, measured against
``tests/fixtures/listening_labels.jsonl``. Text is lowercased; content words are tokens outside a
stop list, lightly stemmed (-s, -ies, -ing, -ed, -ful) with aliases (mom -> mum, gf ->
girlfriend); words are *related* when equal or in one everyday topic (sleep, work, money,
romance, family, body, health, study, friends, mood, grief, conflict).

- ``reflection``: a statement (no question, order, own life, "at least..." or diagnosis such as
  "that sounds like depression") that validates ("it makes sense", "no wonder", "anyone would",
  "is really common", "a big change", "sorry for your loss"); or has a stem ("sounds", "seems",
  "that must", "can feel", "you're feeling") or a feeling word ("exhausting", "hard") anchored by
  "you", a "that/it" subject (feeling words only) or a related word; or echoes two content words
  of the latest user turn, or one after an opening "So" ("So the breakup came out of nowhere").
- ``open_question``: a question clause opening what/how/which/where/when/who/why (factual ones
  such as "How long has it been?" count), or "tell me more", "I'd love to hear", "I wonder what".
  Not yes/no or either/or questions ("Are you okay?", "Would you like to tell me...?"), rebukes
  ("why wouldn't you", "what are you waiting for") or the user's own ("how do I...").
- ``directive``: "you should/need to/must/have to", "try to", "make sure", "I recommend/suggest",
  "it's important to", "the best thing is"; two or more list lines; or one sentence opening with
  an advice verb ("Talk to...", "Block him."; closings like "Take care" exempt; one order is
  enough, not three, as the guide forbids orders). Never when the latest user turn asks ("what
  can/should I do", "any tips/advice/ideas", "how do/can I", "help me", "what would you do").
  Options ("Some people find...", "You could try...", "Have you tried...?") are not orders.
- ``off_topic``: no reflection or feeling word, and small talk ("How are you?", "What's your
  favourite...", "Have a nice day") or two or more content words none related to a user turn
  (he/she/them relate once the user named someone). Answers to a greeting, closings after a
  goodbye and invitations to say more are on topic.
- ``wrong_speaker``: "your <person>" (partner, wife, kids, mum, boss, doctor, pediatrician,
  teacher, therapist; "your line manager") that no user turn named (a generic word like partner
  or kids is fine once anyone of its group was); "my <noun>"; lived experience ("I went
  through", "when I was your age", "me too", "I'm a nurse too", "I ... all the time"); or the
  user's own question ("So how do I get started?").

Blind spots: words, not meaning. A drifting reply reusing a user word is on topic ("Leaves fall in
autumn" after "everyone leaves me"); a fitting check-in in new words can be off topic ("Have you
been sleeping okay?" after "feeling off"). Unanchored feelings ("Breakups hurt.") are missed.
Judging, minimising, diagnosis and cheerleading have no label: "It sounds like she didn't see her
potential there. So, why wouldn't you explain yourself better?" is only neither a reflection nor
an open question. Pronouns ("his teacher"), friends and coworkers are never invented; "see a
doctor" is not "your doctor". Requested advice is never directive, however bossy.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Listening", "assess", "summarise"]


@dataclass(frozen=True)
class Listening:
    """Listening labels of one reply (rules in the module docstring) and its word count."""

    reflection: bool
    open_question: bool
    directive: bool
    off_topic: bool
    wrong_speaker: bool
    words: int


def _rx(alternatives: str) -> re.Pattern[str]:
    """One pattern from one alternative per line."""
    return re.compile("|".join(line.strip() for line in alternatives.strip().splitlines()))


def _lines(table: str) -> list[str]:
    """The lines of a word table; a line starting with a space continues the one before."""
    return table.strip().replace("\n ", " ").splitlines()


_STOP = frozenset(
    " ".join(
        _lines("""
a an the and or but if so then than that this these those it its it's is are was were be been
being am i i'm i've i'd i'll me my mine you you're you've you'd you'll your yours yourself he she
him her his hers they them their we us our what's that's there there's here to of in on at by for
with from about as into out up over off again just really very too also not no yes don't dont
can't cant won't wont isn't didn't doesn't do does did done have has had having get got go going
gone make made can could would should will might may must shall feel feeling felt think know like
want thing things something anything everything nothing everyone everybody anyone someone nobody
lot bit kind sort way even still ever always never some any all every more most much many one ok
okay alright yeah yep oh ah um hmm well now today how what when where which who why whom whose
while because im ive id ill idk lol rn tho though sure sorry please thanks thank hi hey hello good
great nice wonderful amazing congratulations right else keep keeps happen happened see ya around
back other another same own such only after before since until part""")
    ).split()
)
_ALIASES = {"mom": "mum", "gf": "girlfriend", "bf": "boyfriend", "uni": "university"}
_TOPICS = _lines("""
sleep bed bedtime night nights awake insomnia tired exhausted rest nap caffeine 3am morning
work job boss manager coworker colleague office career meeting deadline hr workload promotion fired
 redundant redundancy cv interview shift overtime salary task project presentation slides hours
 procrastinate role team feedback
money broke budget rent bill debt afford spending subscription fund financial cost pay loan tax
 cheap
girlfriend boyfriend partner breakup dumped ex date dating single relationship wife husband wedding
 married marriage divorce cheating couple
mum dad parent brother sister family wife husband partner son daughter baby toddler kid child
 children teenager grandma grandad nan cousin christmas pediatrician
body weight gym calorie eat food diet exercise ugly beautiful looks photo mirror fat
doctor hospital health sick ill appointment scan results therapist medication gp pediatrician
exam school university study revision test grade class teacher homework college procrastinate
lonely friend people club group party social alone invite
down low sad mood anxiety anxious stress panic calm worry meditation yoga journaling breathe cry
 depressed overwhelmed pressure therapist
died death passed loss grief funeral
fight argue argument apologise shout yell row angry""")
# People, "generic: specific": a generic word is fine once anyone of its group was named.
_GROUPS = [
    tuple(part.split() for part in line.split(":"))
    for line in _lines("""
partner spouse: wife husband boyfriend girlfriend fiance fiancee ex
child children kid kids: son daughter baby toddler teen teenager twins
parent parents: mum dad mother father
sibling siblings: brother sister
boss manager supervisor:
doctor gp pediatrician paediatrician consultant:
therapist counsellor counselor:
teacher tutor:
grandparent grandparents: grandma grandmother nan granny gran grandad grandpa grandfather""")
]
_OTHERS = {w for generic, specific in _GROUPS for w in generic + specific} | set(
    " ".join(_lines("friend friends flatmate roommate housemate coworker colleague cousin")).split()
)

_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
_LIST_LINE = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+\S", re.M)
_QUOTED = re.compile(r"(?<!\w)'[^'\n]*?'(?!\w)|\"[^\"\n]*\"")
_YOU = re.compile(r"\byou(?:'re|'ve|'d|'ll|rs?|rself)?\b")
_PRONOUN = re.compile(r"\b(?:he|she|him|her|his|hers|they|them|their)\b")
_DEICTIC = re.compile(r"\b(?:that|this|it)(?:'s| is| was| must| can| could| would| feels)\b")
_DIAGNOSIS = re.compile(r"\b(?:depression|adhd|ocd|ptsd|bipolar|disorder|burnout)\b")
_FILLER = re.compile(r"^(?:so|and|but|well|okay|ok|oh|then|now|hmm)\b[,\s]*")
_PERSON = re.compile(r"\byour\s+([a-z]+)(?:\s+([a-z]+))?")
_FEELING = re.compile(
    r"\b(?:exhaust\w*|tir(?:ed|ing)|drain\w*|stress\w*|hard(?:er|est)?|tough|difficult|pain\w*"
    r"|hurt\w*|lonel\w*|isolat\w*|sad|sadness|upset\w*|scar(?:ed|y)|frighten\w*|terrif\w*|afraid"
    r"|fears?|worr\w*|anxious|nervous|nerve|frustrat\w*|heartbr\w*|awful|horrible|terrible|rough"
    r"|heavy|unfair|humiliat\w*|embarrass\w*|disappoint\w*|dishearten\w*|shock\w*|shaken"
    r"|overwhelm\w*|unsettl\w*|confus\w*|wearing|miserable|annoy\w*|brutal|devastat\w*|stings?"
    r"|stung|relie[fv]\w*|loss|grie[fv]\w*|tense|angry|anger|furious|cruel|gutt\w*|daunting"
    r"|panic\w*|swamped|raw|loaded|tricky|guilt\w*|ashamed|shame|hopeless|helpless|jealous)\b"
)
_VALIDATES = _rx(r"""
    \bmakes? (?:complete |total |a lot of |so much )?sense\b
    \bno wonder\b|\bunderstandabl[ey]\b|\b(?:anyone|anybody)\b|\bof course you\b|\btakes courage\b
    \b(?:it|that)'s (?:so |really )?(?:kind|lovely|brave) (?:of you|that you)\b
    \b(?:really |very |so |more )?(?:common|natural|normal)\b
    \b(?:a|such a) (?:big|huge|massive|real) (?:change|step|thing|moment|shift|deal|loss|blow)
    \bsorry (?:for|about) your\b|\bsorry (?:that )?you\b|\bi can (?:hear|see|imagine)\b
    \b(?:that's|it's|that is|it is|sounds like) (?:a lot|so much)\b|\ba lot to (?:carry|take)
""")
_STEM = _rx(r"""
    \bsounds?\b|\bseems?\b|\bcan (?:feel|be|make)\b|\b(?:that|this|it) (?:must|can|could|would)\b
    \byou(?:'re| are)? (?:feel|feeling|felt|seem)\b
""")
_OWN_LIFE = _rx(r"""
    \bi went through\b|\bwhen i was\b|\bi(?:'ve| have) been through\b|\bi remember when\b
    \bhappened to me\b|\bme too\b|\bi know exactly how you feel\b|\bi(?:'m| am) (?:a|an) \w+ too\b
    \bmy (?!pleasure\b|best\b(?! friend)|own\b|apologies\b|mistake\b|bad\b|guess\b)[a-z]+
""")
_ALSO_ME = re.compile(r"\b(?:too|as well|all the time)\W*$")
_BENIGN_I = re.compile(
    r"^i(?:'m| am)? (?:hope|glad|sorry|here|think|wonder|understand|know|can|would|'d|really)\b"
)
_AS_USER = re.compile(
    r"\b(?:(?:how|what|where|when)\s+(?:do|should|can|could|would|will|shall|am)|should)\s+i\b"
    r"(?!\s+(?:help|support|do for you))"
)
_WH = re.compile(r"^(?:what|how|which|where|when|who|whom|whose|why)\b|^(?:what|how|who)'s\b")
_NOT_OPEN = re.compile(
    r"^why (?:don't|do not|wouldn't|won't|didn't|can't|couldn't|aren't|isn't) you\b"
    r"|^what are you waiting for\b"
)
_INVITE = _rx(r"""
    ^(?:please )?tell me (?:more|about|what|how)\b|^i(?:'d| would) (?:love|like) to hear\b
    ^i(?:'m| am)? (?:wonder|wondering|curious) (?:what|how|about)\b
""")
_ASKED = _rx(r"""
    \bwhat (?:can|could|should|do|would|shall) i\b|\bshould i\b|\bhelp me\b
    \bwhat (?:would|should|do) you (?:do|suggest|recommend|think i)\b
    \b(?:tips?|advice|ideas?|suggestions?|ways to|how to)\b|\bhow (?:do|can|could|should) i\b
    \bis there anything\b|\banything (?:that )?(?:helps|i can)\b|\bwhat helps\b
    \bcan you (?:give|suggest|recommend|tell me what)\b
""")
_DIRECTIVE = _rx(r"""
    \byou (?:really |just |definitely |also |absolutely )?(?:should(?!n|'ve| have)|must(?! have))
    \byou (?:really |just |definitely |also |absolutely )?(?:need to|have to|ought to|gotta)\b
    \btry to\b|\bmake sure\b|\bmy advice\b|\bthe best thing (?:is|to|you can)\b
    \bi(?:'d| would)? ?(?:strongly |really )?(?:recommend|suggest|advise)\b
    \bit(?:'s| is) (?:really |so |very )?(?:important|essential|crucial|vital|key) (?:to|that)\b
    \b(?:don't|do not) forget to\b|\bremember to\b|\bhere are (?:some|a few) (?:tips|ideas|steps)\b
""")
_ADVICE_VERB = re.compile(
    r"^(?:just |also |then |first,? |please )?(?:try|make|take|go|talk|get|stop|start|avoid|keep"
    r"|set|write|drink|eat|call|tell|focus|stay|practi[cs]e|limit|put|give|find|join|break|reward"
    r"|block|delete|distract|listen|think|aim|cancel|track|build|update|hit|see|consider|cook"
    r"|spend|plan|create|ask|reach|breathe|arrive|wear|use|turn|switch|buy|move|accept|let|be"
    r"|don't|do not|do|quit|leave|ignore|remove|unfollow|speak|check|book)\b"
)
_CLOSING_ORDER = re.compile(
    r"^(?:take care|take your time|look after|sleep well|rest well|be (?:gentle|kind|easy)|go easy"
    r"|tell me|let me|keep up|have a|feel free|hang in|see you|talk soon|keep in touch)"
)
_SMALL_TALK = _rx(r"""
    \bhow are you(?: doing)?\s*(?:today\s*)?\?|\bhow(?:'s| is) it going\b|\bwhat's new\b
    \bfavou?rite\b|\bwhat are your hobbies\b|\bhow was your (?:day|weekend|week)\b
    \bplans for the weekend\b|\bdid you do anything fun\b|\bthank you for your message\b
    \bhow can i help you\b|\bwhat can i do for you\b|\bnice to chat\b|\bhave a (?:nice|good) day\b
    \bi (?:cannot|can't|am unable to) help with\b
""")
_GOODBYE = re.compile(
    r"\b(?:thanks|thank you|thx|ty|cheers|bye|goodbye|good ?night|night|gotta go|got to go|see ya"
    r"|see you|ttyl|talk later|off to bed)\b"
)
_CLOSING = re.compile(
    r"\b(?:welcome|take care|bye|good ?night|any ?time|of course|glad|look after|sleep well|hope"
    r"|rest well|see you|talk soon|thanks for|thank you for|care|no problem|have to go)\b"
)
_GREETING = re.compile(r"^\W*(?:hi|hey|hello|hiya|yo|morning|evening)\b\W*$")


def _stem(word: str) -> str:
    word = _ALIASES.get(word, word).removesuffix("'s")
    plural, tense = (("ies", "y"), ("s", "")), (("ied", "y"), ("ing", ""), ("ful", ""), ("ed", ""))
    for suffixes in (plural, tense):
        for suffix, keep in suffixes:
            if word.endswith(suffix) and len(word) - len(suffix) >= 3 and not word.endswith("ss"):
                word = word[: -len(suffix)] + keep
                break
    if len(word) > 3 and word[-1] == word[-2] and word[-1] not in "lsz":
        word = word[:-1]
    return word[:-1] if len(word) > 4 and word[-1] in "ei" else word


_TOPIC_OF: dict[str, set[int]] = {}
for _number, _topic in enumerate(_TOPICS):
    for _word in _topic.split():
        _TOPIC_OF.setdefault(_stem(_word), set()).add(_number)


def _content(text: str) -> set[str]:
    return {_stem(w) for w in _TOKEN.findall(text) if w not in _STOP and len(w) > 1}


def _related(a: set[str], b: set[str]) -> bool:
    """Whether two sets of content words share a word or an everyday topic."""
    topics = {t for w in a for t in _TOPIC_OF.get(w, ())}
    return bool(a & b) or any(t in topics for w in b for t in _TOPIC_OF.get(w, ()))


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(text) if s.strip()]


def _first_person(sentence: str) -> bool:
    return bool(re.match(r"^i\b", sentence)) and not _BENIGN_I.match(sentence)


def _invents_person(reply: str, user_text: str) -> bool:
    named = {_ALIASES.get(w, w) for w in _TOKEN.findall(user_text)}
    named |= {w.removesuffix("s") for w in named}
    for pair in _PERSON.findall(reply):  # "your mum", or one word on: "your line manager"
        for word in (_ALIASES.get(w, w) for w in pair):
            group = next(((g, s) for g, s in _GROUPS if word in g or word in s), None)
            if group is None:
                continue
            generic = word in group[0]
            if word.removesuffix("s") not in named and not (
                generic and named & {*group[0], *group[1]}
            ):
                return True
            break
    return False


def _wrong_speaker(reply: str, user_text: str) -> bool:
    unquoted = _QUOTED.sub(" ", reply)
    if _OWN_LIFE.search(unquoted) or _invents_person(unquoted, user_text):
        return True
    return any(
        (s.endswith("?") and _AS_USER.search(s)) or (_first_person(s) and _ALSO_ME.search(s))
        for s in _sentences(unquoted)
    )


def _orders(sentence: str) -> bool:
    bare = _FILLER.sub("", sentence)
    if sentence.endswith("?"):
        return bare.startswith("why don't you")
    if _DIRECTIVE.search(sentence):
        return True
    return bool(_ADVICE_VERB.match(bare)) and not _CLOSING_ORDER.match(bare)


def _reflects(sentence: str, latest: set[str]) -> bool:
    if sentence.endswith("?") or sentence.startswith("at least") or _DIAGNOSIS.search(sentence):
        return False
    if _orders(sentence) or _OWN_LIFE.search(sentence):
        return False
    if _VALIDATES.search(sentence):
        return True
    if _first_person(sentence):
        return False
    words = _content(sentence)
    you, feeling = bool(_YOU.search(sentence)), bool(_FEELING.search(sentence))
    related = _related(words, latest)
    if _STEM.search(sentence) and (you or feeling or related):
        return True
    if feeling and (you or related or _DEICTIC.search(sentence)):
        return True
    shared = len(words & latest)
    return not sentence.endswith("!") and (shared >= 2 or (shared == 1 and sentence[:3] == "so "))


def _is_open(sentence: str) -> bool:
    if _INVITE.search(sentence):
        return True
    clauses = re.split(r"[,;:\u2014\u2013]\s*", sentence) if sentence.endswith("?") else []
    bare = [_FILLER.sub("", c.strip()) for c in clauses]
    return any(_WH.match(c) and not _NOT_OPEN.match(c) and not _AS_USER.match(c) for c in bare)


def _clean(text: str) -> str:
    return text.lower().replace("\u2019", "'").replace("\u201c", '"').replace("\u201d", '"')


def assess(reply: str, conversation: Sequence[dict[str, str]]) -> Listening:
    """Listening labels of ``reply`` to ``conversation``.

    Args:
        reply: the companion's reply.
        conversation: the messages before the reply (``{"role", "content"}``); the last is the
            user's turn being answered.

    Returns:
        The reply's :class:`Listening` labels.

    Example:
        >>> turns = [{"role": "user", "content": "i failed my test"}]
        >>> assess("That must be hard. What has been the hardest part?", turns).open_question
        True
    """
    user_turns = [_clean(m["content"]) for m in conversation if m.get("role") == "user"]
    latest_text, user_text = (user_turns or [""])[-1], " ".join(user_turns)
    text = _clean(reply)
    sentences, latest, own = _sentences(text), _content(latest_text), _content(text)

    reflection = any(_reflects(s, latest) for s in sentences)
    listed = len(_LIST_LINE.findall(text)) >= 2
    directive = not _ASKED.search(latest_text) and (listed or any(map(_orders, sentences)))
    goodbye = bool(_GOODBYE.search(latest_text) and _CLOSING.search(text))
    someone = bool(_OTHERS & set(_TOKEN.findall(user_text)) and _PRONOUN.search(text))
    if reflection or goodbye or _GREETING.match(latest_text) or any(map(_INVITE.search, sentences)):
        off_topic = False
    elif _SMALL_TALK.search(text):
        off_topic = True
    else:
        linked = someone or bool(_FEELING.search(text)) or _related(own, _content(user_text))
        off_topic = not linked and len(own) >= 2
    return Listening(
        reflection=reflection,
        open_question=any(map(_is_open, sentences)),
        directive=directive,
        off_topic=off_topic,
        wrong_speaker=_wrong_speaker(text, user_text),
        words=len(_TOKEN.findall(text)),
    )


def summarise(results: Sequence[Listening]) -> dict[str, float]:
    """Shares of ``results`` with each label, in [0, 1] (0.0 when empty), and their count ``n``.

    Keys: ``reflection``, ``open_question``, ``reflection_or_open_question``, ``directive``,
    ``off_topic``, ``wrong_speaker``, ``off_topic_or_wrong_speaker``, ``words_20_90`` (replies of
    20 to 90 words) and ``n``.
    """
    counts = {
        "reflection": sum(r.reflection for r in results),
        "open_question": sum(r.open_question for r in results),
        "reflection_or_open_question": sum(r.reflection or r.open_question for r in results),
        "directive": sum(r.directive for r in results),
        "off_topic": sum(r.off_topic for r in results),
        "wrong_speaker": sum(r.wrong_speaker for r in results),
        "off_topic_or_wrong_speaker": sum(r.off_topic or r.wrong_speaker for r in results),
        "words_20_90": sum(20 <= r.words <= 90 for r in results),
    }
    n = len(results)
    return {**{k: v / n if n else 0.0 for k, v in counts.items()}, "n": float(n)}
