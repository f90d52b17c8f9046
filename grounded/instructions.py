"""Spoken edit commands -> edits: `parse_edits("Could you please remove the bicycle and make the
sky purple?")` -> [Edit("remove", "bicycle"), Edit("recolor", "sky", "purple")].

A small grammar, not a list of sentences:

    utterance := clause ((, | and | then | also | .) clause)*
    clause    := filler* command filler*
    command   := REMOVE target                      remove, delete, erase, get rid of, take out, ...
               | REPLACE target (with|by|for) thing   replace, swap, exchange, substitute ... with
               | SUBSTITUTE thing for target         substitute, swap in, put ... in place of / instead of
               | CHANGE target (into|to|for) thing   change, turn, make, transform, convert, switch, ...
               | CHANGE target colour                turn the red car blue, make the sky purple
               | PAINT target (in|to)? colour         paint, colour, recolour, dye, tint
               | CHANGE the colour of target to colour
               | target should be | becomes | to be thing-or-colour
               | make target disappear | target should go / be removed

`thing` is an object (the edit replaces the target with it) unless it is a colour phrase ("light
blue", "reddish", "bright green coloured", "a blue one"): then the target is recoloured. Targets
keep their qualifiers ("the person on the left" -> "person on the left"); "it"/"them" refer to the
previous target; "remove the cat and the dog" is two edits, and so is "change the dog to a monkey
and the cat to a tiger" (the verb carries over).

A remark is never an edit: a description ("the cup is red", "there is a dog", "the trees look
orange") or a question asking for information ("is the cup red?", "what colour is the sky?") is
left out, and an utterance of remarks only is refused. Requests phrased as questions ("could you
remove the cup?", "can the sky be pink?", "why don't you ...", "is it possible to ...") and
prescriptive forms ("the sky should be purple", "the cup has to go") are commands. What a remark
names can be referred to: "there is a dog on the left, remove it".
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence

from .edit.colors import NOUN_COLORS, color_phrase, color_suffix
from .edit.vocabulary import (CHANGE_VERBS, DETERMINERS, IRREGULAR, KNOWN_FORMS, LEADING_FILLERS, MATERIALS,
                              PAINT_VERBS, PREPOSITIONS, PRONOUNS, PUT_VERBS, REMOVE_VERBS, REPLACE_VERBS, SCENE_WORDS,
                              TRAILING_FILLERS, VERBS)

ACTIONS = ("replace", "recolor", "remove")


@dataclass(frozen=True)
class Edit:
    """One edit: `action` (replace, recolor or remove), the `target` object in words, and the
    `value`: the new object (replace), the colour (recolor) or None (remove)."""

    action: str
    target: str
    value: Optional[str] = None

    def as_dict(self) -> Dict[str, Optional[str]]:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.action} {self.target!r}" + (f" -> {self.value!r}" if self.value else "")




class InstructionError(ValueError):
    """An utterance with no edit this grammar understands; the message quotes it and lists the forms."""

    def __init__(self, utterance: str, detail: str = ""):
        self.utterance = utterance
        lines = "\n  ".join(KNOWN_FORMS)
        super().__init__(f"cannot understand the edit instruction {utterance!r}"
                         + (f" ({detail})" if detail else "") + f"; the forms I know:\n  {lines}")


# Openers of a request phrased as a question or a suggestion: "is it possible to remove the cup?".
REQUEST_OPENERS = ("is it possible to", "would it be possible to", "is there any way to", "is there a way to",
                   "is there any way you could", "is there a way you could", "any chance you could",
                   "do you think you could", "do you think you can", "why don't you", "why not", "how about you",
                   "how about", "what about")
_OPENERS = sorted([*LEADING_FILLERS, *REQUEST_OPENERS], key=len, reverse=True)

_DET = r"(?:the|a|an|this|that|these|those|my|our|your|his|her|their|its|some|any|both|every|each|all)"
_BOUNDARY = re.compile(r"\s*(?:,|;|\.|!|\?|:)\s*|\s+(?:and then|and also|and|then|also|plus|after that)\s+")


# ---- normalising ---------------------------------------------------------------------------------

def normalise(utterance: str) -> str:
    """Lower case, one space between words, Whisper's punctuation kept only where it separates
    clauses (, ; . ! ? :), curly quotes straightened."""
    text = utterance.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')
    text = text.lower()
    text = re.sub(r"(?<=\w)-(?=(?:colou?red|ish|toned|tinted)\b)", " ", text)  # red-coloured; t-shirt stays
    text = re.sub(r"[\"()\[\]{}*_~`]", " ", text)
    text = re.sub(r"(?<!\d)\.(?!\d)", " . ", text)          # sentence dots, not 1.5
    text = re.sub(r"([,;!?:])", r" \1 ", text)
    text = text.replace("colour", "color")
    text = re.sub(r"\b(?:gonna)\b", "going to", text)
    text = re.sub(r"\bwanna\b", "want to", text)
    return re.sub(r"\s+", " ", text).strip()




def base_verb(word: str) -> str:
    """"removing" / "removed" / "removes" -> "remove" for the verbs of the grammar (a clause's first
    word only: "the painting" stays a painting)."""
    if word in IRREGULAR:
        return IRREGULAR[word]
    single = {v for v in VERBS if " " not in v}
    for suffix, add in (("ing", ""), ("ing", "e"), ("ed", ""), ("ed", "e"), ("d", ""), ("es", ""), ("s", "")):
        if word.endswith(suffix) and word[: -len(suffix)] + add in single:
            return word[: -len(suffix)] + add
    return word


def _base_first(clause: str) -> str:
    first, _, rest = clause.partition(" ")
    base = base_verb(first)
    return clause if base == first else (base + (" " + rest if rest else ""))


def strip_fillers(clause: str) -> str:
    clause = clause.strip(" ,;.!?:")
    if clause in TRAILING_FILLERS or re.match(r"(?:thank|thanks|cheers|much appreciated|that's all|that is all)\b", clause):
        return ""  # "..., thanks!" / "thank you so much!" is a chunk of its own
    changed = True
    while changed and clause:
        changed = False
        for filler in _OPENERS:
            if clause == filler or clause.startswith(filler + " "):
                clause, changed = clause[len(filler):].strip(" ,"), True
                break
        for filler in TRAILING_FILLERS:
            if clause.endswith(" " + filler):
                clause, changed = clause[: -len(filler)].strip(" ,"), True
                break
    return _base_first(clause)


def clean_target(text: str) -> str:
    """An object phrase without its leading article and "in the picture": "the person on the left"
    -> "person on the left"."""
    text = text.strip(" ,.")
    text = re.sub(rf"\s+(?:(?:that|which) (?:is|are)\s+)?(?:in|from|of|out of|on|off) (?:the|this|my|our) {SCENE_WORDS}$", "", text)
    text = re.sub(r"\s+(?:(?:over|right|up|down|back|in|out) )?(?:there|here)$|\s+please$", "", text)
    for det in sorted(DETERMINERS, key=len, reverse=True):
        if text.startswith(det + " "):
            text = text[len(det) + 1:]
            break
    return text.strip()


# ---- parsing -------------------------------------------------------------------------------------

def parse_edits(utterance: str) -> List[Edit]:
    """Every edit an utterance asks for, in order; InstructionError if it asks for none this
    grammar understands (or a part of it cannot be read)."""
    if not isinstance(utterance, str) or not utterance.strip():
        raise InstructionError(utterance if isinstance(utterance, str) else repr(utterance), "it is empty")
    text = normalise(utterance)
    chunks = _chunks(text)
    edits: List[Edit] = []
    current = ""        # the clause being built; a chunk that is no clause of its own joins it
    verb = ""           # the previous clause's verb, for "change the dog to a monkey and the cat to a tiger"
    remark = ""         # the first remark, for the error when nothing else is said
    for joiner, chunk in chunks:
        body = strip_fillers(chunk)
        if not body:
            continue
        subject = remark_subject(body) if current not in VERBS else None
        if subject is not None:  # a description or a question: no edit, but "it" may refer to what it names
            if current:
                edits += _clause(current, utterance, edits)
            if subject:
                edits.append(Edit(_MENTION, subject))
            current, verb, remark = "", "", remark or body
            continue
        if current in VERBS:  # "delete, uh, the lamp": the verb waits for its object
            current = f"{current} {body}"
        elif current and _parses(body):
            edits += _clause(current, utterance, edits)
            current = body
        elif current and verb and _starts_with_determiner(body) and _parses(f"{verb} {body}"):
            edits += _clause(current, utterance, edits)
            current = f"{verb} {body}"
        elif current and _verb_of(body) and " " in body and not _parses(f"{current} {joiner} {body}".replace(" , ", ", ")):
            # a clause of its own that the grammar cannot read must not become part of the last one's value
            raise InstructionError(utterance, f"cannot read {body!r}")
        elif current:
            current = f"{current} {joiner} {body}".replace(" , ", ", ")
        else:
            current = body
        verb = _verb_of(current) or verb
    if current:
        edits += _clause(current, utterance, edits)
    said = [e for e in edits if e.action in ACTIONS]
    if remark and not said:
        raise InstructionError(utterance, f"{remark!r} describes or asks about the image, and a remark is no "
                                          "edit; say what to change, e.g. 'make the sky purple'")
    chatter = [e for e in edits if e.action == _CHATTER]
    if chatter and not said:  # only sentences without an edit verb: say which one could not be read
        raise InstructionError(utterance, f"cannot read {chatter[0].target!r}")
    edits = said
    if not edits:
        raise InstructionError(utterance, "it asks for no edit")
    return edits


def _chunks(text: str) -> List[tuple]:
    """(joiner, text) pieces between clause boundaries; the joiner is the word that preceded it."""
    out, last, joiner = [], 0, ""
    for match in _BOUNDARY.finditer(text):
        out.append((joiner, text[last:match.start()]))
        joiner, last = match.group(0).strip() or ",", match.end()
    out.append((joiner, text[last:]))
    return [(j if j not in (".", "!", "?", ";", ":") else ",", c) for j, c in out if c.strip()]


def _starts_with_determiner(text: str) -> bool:
    return re.match(rf"{_DET}\b", text) is not None


def _verb_of(clause: str) -> str:
    for verb in VERBS:
        if clause == verb or clause.startswith(verb + " "):
            return verb
    return ""


def _parses(clause: str) -> bool:
    try:
        return bool(_command(clause))
    except InstructionError:
        return False


def _clause(clause: str, utterance: str, before: Sequence[Edit]) -> List[Edit]:
    edits = _command(clause)
    if not edits:
        if not any(re.search(rf"\b{re.escape(v)}\b", clause) for v in VERBS) and re.search(r"[.!?]", utterance):
            return [Edit(_CHATTER, clause)]  # "hmm, let me think. remove the chair": a sentence with no edit verb
        raise InstructionError(utterance, f"cannot read {clause!r}")
    out = []
    for edit in edits:
        target = edit.target
        earlier = [e for e in (out or list(before)) if e.action != _CHATTER]  # mentions count: "there is a dog, remove it"
        if target in PRONOUNS or not target:
            if not earlier:
                raise InstructionError(utterance, f"{target or 'the object'!r} refers to nothing said before")
            target = earlier[-1].target
        elif re.match(r"ones? ", target) and earlier:  # "the one on the left": the noun said before
            target = f"{head_noun(earlier[-1].target)} {target.split(' ', 1)[1]}"
        out.append(Edit(edit.action, target, edit.value))
    return out


_CHATTER = "chatter"  # the action of a sentence that is no command (dropped when others are)
_MENTION = "mention"  # what a remark names, for a later "it" (never an edit)

_STATE = (r"(?:is|are|was|were|isn't|aren't|wasn't|weren't|has been|have been|had been|looks?|seems?|appears?|"
          r"has|have|had|contains?|shows?|holds?|sits?|stands?|lies?|hangs?|wears?|remains?|stays?)")
_PRESCRIPTIVE = (r"\b(?:should|shall|must|ought|needs?|has to|have to|had better|has got to|is to|are to|"
                 r"(?:is|are) going to|will|would|could|can|may|might|want|wants|wish|i'd|we'd|prefer|let|please)\b")
_WH = r"(?:what|what's|whats|where|where's|which|who|who's|whom|whose|why|when|how|how's)"
_ASKING = r"(?:is|are|was|were|isn't|aren't|wasn't|weren't|am|does|doesn't|did|didn't|do you|has|hasn't|have|haven't)"


def remark_subject(clause: str) -> Optional[str]:
    """What a remark names ("" for a question), or None when the clause is no remark. A remark
    describes the image ("the cup is red", "there are two dogs", "the trees look orange") or asks
    about it ("is the cup red", "what colour is the sky"); a clause that starts with a verb of the
    grammar, or says what should be ("should", "has to", "want", "can", ...), is none."""
    c = clause.strip(" ,")
    if not c or _verb_of(c):
        return None
    if re.match(rf"{_WH}\b", c) or re.match(rf"{_ASKING}\b", c) and not _verb_of(c.split(" ", 1)[-1]):
        m = re.fullmatch(r"(?:what(?: color| size| shape)?|where) (?:is|are|was|were) (.+)", c)
        return clean_target(m.group(1)) if m else ""
    if re.search(_PRESCRIPTIVE, c):
        return None
    m = re.match(rf"(?:there|here) (?:{_STATE}|seems? to be|appears? to be) (.+)", c) \
        or re.match(r"(?:there's|here's|i see|i like|i love|i notice) (.+)", c)
    if m:
        return clean_target(m.group(1))
    if re.match(r"(?:it's|that's|this's|he's|she's|they're|we're|i think)\b", c):
        return ""
    m = re.fullmatch(rf"((?:\S+ ){{0,6}}?\S+) {_STATE}\b.*", c)
    if m and not re.search(r"\b(?:to|into|with|instead|become|becomes|turns?)\b", m.group(1)):
        return clean_target(re.sub(r"\s+(?:that|which|who)$", "", m.group(1)))
    return None


def head_noun(target: str) -> str:
    """The object's words before its qualifiers: "red car on the right" -> "red car"."""
    return re.split(rf"\s+{PREPOSITIONS}\b", target, maxsplit=1)[0]


def _holds_a_clause(text: str) -> bool:
    """Whether a target or value has another command in it ("a dog, make the grass bigger")."""
    return any(_verb_of(part.strip()) for part in text.split(",")[1:])


def _many(action: str, targets: str, value: Optional[str] = None) -> List[Edit]:
    """One edit per object in "the cat, the dog and the bird" (split before an article only:
    "the black and white cat" is one object)."""
    if _holds_a_clause(targets) or (value and _holds_a_clause(value)):
        return []
    parts = re.split(rf"\s*,\s*(?:and\s+)?(?={_DET}\b)|\s+(?:and|as well as|along with|plus)\s+(?={_DET}\b)", targets)
    out = []
    for part in parts:
        target = clean_target(part)
        if not target:
            return []
        out.append(Edit(action, target, value))
    return out


def _thing(action_if_object: str, target: str, value: str, painting: bool = False) -> List[Edit]:
    """Replace the target with `value`, or recolour it when `value` is a colour phrase (but "an
    orange" is a fruit, unless the verb was a painting one)."""
    value = value.strip(" ,")
    was = re.fullmatch(r"(.+) from (.+)", target)  # "change the shirt from red to blue": what it was is no target
    if was and (color_phrase(was.group(2).split()) or re.match(r"(?:a|an) \w+$", was.group(2))):
        target = was.group(1)
    # "the sofa to be replaced by a piano", "the car painted red": the verb is not part of the value
    value = re.sub(r"^(?:replaced|swapped|exchanged|substituted|traded|changed|turned|transformed|converted|made|"
                   r"painted|colored|recolored|dyed|tinted)(?: (?:with|by|for|into|to|in))?\s+", "", value)
    words = value.split()
    color = color_phrase(words)
    if color is not None and not painting and len(words) == 2 and words[0] in ("a", "an") and words[1] in NOUN_COLORS:
        color = None
    if color is not None:
        return _many("recolor", target, color)
    value = re.sub(r"^(?:look|looks) like\s+", "", value)
    value = clean_target(value)
    if not value:
        return []
    return _many(action_if_object, target, value)


def _alts(words: Sequence[str]) -> str:
    return "(?:" + "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)) + ")"


_REMOVE = _alts(REMOVE_VERBS)
_REPLACE = _alts(REPLACE_VERBS)
_CHANGE = _alts(CHANGE_VERBS)
_PAINT = _alts(PAINT_VERBS)
_PUT = _alts(PUT_VERBS)
_BE = r"(?:should|must|shall|will|would|could|can|needs? to|has to|have to|ought to|is going to|is to)?\s*(?:be|become|turn into|look like|get)|becomes|turns into|looks like|is"


def _substitution(c: str) -> Optional[List[Edit]]:
    """Substitution, "substitute X for Y": Y goes, X comes (before the colour forms, which read "for" otherwise)."""
    m = re.fullmatch(r"(?:substitute|swap in|switch in|sub in|sub|put in|bring in) (.+?) (?:for|in place of|instead of) (.+)", c)
    if m:
        return _thing("replace", m.group(2), m.group(1))
    return None


def _colour_of(c: str) -> Optional[List[Edit]]:
    """A colour change: "change the colour of X to Y", "give X a Y colour", "paint X Y"."""
    m = re.fullmatch(rf"(?:{_CHANGE}|{_PAINT}) (?:the )?color of (.+) (?:to|into|in|as) (.+)", c) \
        or re.fullmatch(rf"(?:{_CHANGE}|{_PAINT}) (.+?)(?:'s|')? color (?:to|into|in|as) (.+)", c)
    if m and color_phrase(m.group(2).split()):
        return _many("recolor", m.group(1), color_phrase(m.group(2).split()))
    m = re.fullmatch(r"(?:give|paint) (.+?) an? (.+?) (?:color|tint|coat(?: of paint)?|paint job|look|hue|shade)", c)
    if m and color_phrase(m.group(2).split()):
        return _many("recolor", m.group(1), color_phrase(m.group(2).split()))
    m = re.fullmatch(rf"(?:the )?color of (.+?) (?:{_BE}) (.+)", c)
    if m and color_phrase(m.group(2).split()):
        return _many("recolor", m.group(1), color_phrase(m.group(2).split()))
    return None


def _removal(c: str) -> Optional[List[Edit]]:
    """A removal: "remove X", "make X disappear", "I don't want X", "no more X"."""
    m = re.fullmatch(r"(?:make|let) (.+?) (?:disappear|vanish|go away|go|be gone|invisible)", c) \
        or re.fullmatch(rf"(?:{_REMOVE}) (.+?)(?: (?:out|away|off|out of (?:the|this) {SCENE_WORDS}))?", c) \
        or re.fullmatch(r"(?:i )?(?:do not|don't|dont) (?:want|need|like) (?:to see )?(.+?)(?: (?:in|there|here).*)?", c) \
        or re.fullmatch(r"(.+?) (?:should|must|needs to|has to|can|could) (?:be )?(?:go|gone|removed|deleted|erased|disappear|vanish)", c) \
        or re.fullmatch(rf"(?:get|take) (.+?) (?:out|away|off)(?: of (?:the|this) {SCENE_WORDS})?", c) \
        or re.fullmatch(r"(?:i want|i'd like|i would like|i need|i'd prefer|have|get) (.+?) (?:to be )?(?:gone|removed|"
                        r"deleted|erased|out|out of here|out of the way)", c) \
        or re.fullmatch(r"(?:no more|without|lose) (.+)", c)
    if m:
        return _many("remove", m.group(1))
    return None


def _replacement(c: str) -> Optional[List[Edit]]:
    """A new thing after "with"/"by"/"for"/"instead of"."""
    m = re.fullmatch(rf"(?:{_REPLACE}) (.+?)(?: out)? (?:with|by|for|to) (.+)", c)
    if m and " with " in c:  # the last "with": "replace the man with the hat with a woman"
        m = re.fullmatch(rf"(?:{_REPLACE}) (.+)(?<! out)(?: out)? with (.+)", c)
    if m and not c.startswith("substitute") or (m and " with " in c):
        return _thing("replace", m.group(1), m.group(2))
    m = re.fullmatch(r"(?:substitute|swap in|switch in|sub in|sub) (.+?) (?:for|in place of|instead of) (.+)", c)
    if m:
        return _thing("replace", m.group(2), m.group(1))
    m = re.fullmatch(rf"(?:{_PUT}|replace it with|i want|i'd like|i would like|let there be|there should be|make it|"
                     rf"make that|make them) (.+?) (?:in place of|instead of|where|in the place of) "
                     rf"(.+?)(?: (?:is|was|are|were|stands|sits|used to be))?", c)
    if m:
        return _thing("replace", m.group(2), m.group(1))
    put = r"(?:put|use|have|show|draw|place|give me|make it|i want|i'd like|let there be|there should be|add)"
    m = re.fullmatch(rf"instead of (.+?)(?:, (?:{put} )?| {put} )(.+)", c)
    if m:
        return _thing("replace", m.group(1), m.group(2))
    return None


def _change(c: str) -> Optional[List[Edit]]:
    """A change: "turn X into Y", "X should be Y"; a colour makes it a recolour."""
    m = re.fullmatch(rf"(?:{_CHANGE}|{_PAINT}) (.+?) (?:into|in to|to look like|look like|resemble|to become|become|"
                     rf"to be|be) (.+)", c) \
        or re.fullmatch(rf"(?:{_CHANGE}|{_PAINT}) (.+) (?<!next )(?<!close )(?:to|for) (.+)", c)
    if not m:  # "in" / "as" often belong to the target ("the tree in the background"): only before a colour
        m = re.fullmatch(rf"(?:{_CHANGE}|{_PAINT}) (.+) (?:in|as) (.+)", c)
        m = m if m and color_phrase(m.group(2).split()) else None
    if m and m.group(1) and m.group(2):
        return _thing("replace", m.group(1), m.group(2), painting=re.match(_PAINT + " ", c) is not None)
    m = re.fullmatch(r"(?:i want|i'd like|i would like|i need|let|make|have|get|want|i'd prefer|i would prefer|i prefer) "
                     r"(.+?) (?:to be|to become|be|become|to look like|look like|turned into|changed to|changed into|"
                     r"made into|painted|colored) (.+)", c) \
        or re.fullmatch(r"(?:can|could|would|will|should|may|might|shall) (.+?) (?:be|become|turn into|look like|get) (.+)", c) \
        or re.fullmatch(rf"(.+?) (?:{_BE}) (?:replaced|swapped|exchanged|substituted|traded) (?:with|by|for) (.+)", c) \
        or re.fullmatch(rf"(.+?) (?:{_BE}) (?:changed |turned |made |painted |colored |recolored |dyed |transformed |converted )?(?:into |to |in )?(.+)", c)
    if m and not _verb_of(m.group(1)):
        return _thing("replace", m.group(1), m.group(2))
    m = re.fullmatch(r"(?:i want|i'd like|i would like|i'd prefer|i would prefer|i prefer|make|have) (.+) in (.+)", c)
    if m and color_phrase(m.group(2).split()):  # "i'd prefer the car in red"
        return _many("recolor", m.group(1), color_phrase(m.group(2).split()))
    return None


def _look_material_or_colour(c: str) -> Optional[List[Edit]]:
    """A look, a material or a colour: "make the leaves look orange", "make the table wooden", "turn the car blue"."""
    # "make the leaves look autumn orange": a look that ends in a colour
    m = re.fullmatch(rf"(?:{_CHANGE}) (.+?) (?:look|appear|seem) (.+)", c)
    if m:
        words = m.group(2).split()
        start, color = color_suffix(words)
        if color:
            return _many("recolor", m.group(1), color)
        return _thing("replace", m.group(1), m.group(2))
    # "make the table wooden": a material makes a new object of that material
    m = re.fullmatch(rf"(?:{_CHANGE}) (.+) (\w+)", c)
    if m and m.group(2) in MATERIALS and color_phrase([m.group(2)]) is None and clean_target(m.group(1)):
        target = clean_target(m.group(1))
        return [Edit("replace", target, f"{m.group(2)} {target}")]
    # "turn the car blue", "paint the wall light green", "make the sky purple"
    m = re.fullmatch(rf"(?:{_CHANGE}|{_PAINT}) (.+)", c)
    if m:
        words = m.group(1).split()
        # the target keeps at least one word besides its article: "the sky purple" is not "sky purple"
        first = next((i + 1 for i, w in enumerate(words) if w not in DETERMINERS), len(words))
        start, color = color_suffix(words, min_start=first)
        if color and start > 0:
            return _many("recolor", " ".join(words[:start]), color)
        # "make the dog a monkey": the new object starts at the last indefinite article
        if re.match(rf"(?:{_CHANGE}) ", c):
            for i in range(len(words) - 1, 0, -1):
                if words[i] in ("a", "an", "some") and i > 0:
                    return _thing("replace", " ".join(words[:i]), " ".join(words[i:]))
    return None


def _command(clause: str) -> List[Edit]:
    """The edits of one clause (no fillers left), or [] when it is none of the known forms. The forms are
    tried in order; the first that matches decides, even when it finds no edit."""
    c = clause.strip(" ,")
    c = re.sub(rf" (?:from|in|on) (?:the|this|my|our) {SCENE_WORDS}$", "", c)  # "... from the picture"
    for form in (_substitution, _colour_of, _removal, _replacement, _change, _look_material_or_colour):
        edits = form(c)
        if edits is not None:
            return edits
    return []




def edits_as_dicts(edits: Sequence[Edit]) -> List[Dict[str, Optional[str]]]:
    return [e.as_dict() for e in edits]


def edit_from_dict(data: Dict) -> Edit:
    action = data.get("action")
    if action not in ACTIONS:
        raise ValueError(f"an edit's action is one of {list(ACTIONS)}, got {action!r}")
    if not data.get("target"):
        raise ValueError(f"the {action} edit has no target: {data!r}")
    if action != "remove" and not data.get("value"):
        raise ValueError(f"a {action} edit needs a value (the new {'object' if action == 'replace' else 'colour'}): {data!r}")
    return Edit(action, str(data["target"]), None if action == "remove" else str(data["value"]))
