"""The words of the edit-instruction grammar (`grounded.instructions`): verbs of each action and
their synonyms, politeness and hesitation around a command, determiners, materials. Colours are
in `grounded.edit.colors`."""

REMOVE_VERBS = ("get rid of", "take out", "take away", "cut out", "rub out", "wipe out", "wipe away", "clear out",
                "clean up", "erase", "remove", "delete", "eliminate", "drop", "lose", "ditch", "hide", "clear",
                "strip out", "strip", "scrub", "eradicate", "omit", "exclude", "discard", "kill", "cut",
                "paint out", "edit out", "photoshop out", "crop out", "blank out", "white out", "black out")
REPLACE_VERBS = ("swap out", "switch out", "replace", "swap", "switch", "exchange", "trade", "substitute")
CHANGE_VERBS = ("change", "turn", "transform", "convert", "make", "switch", "morph", "alter", "modify",
                "transmute", "render", "set", "update")
PAINT_VERBS = ("recolor", "recolour", "repaint", "paint", "color", "colour", "dye", "tint", "shade", "spray",
               "spray paint", "colorize", "colourize")
PUT_VERBS = ("put", "place", "add", "insert", "draw", "use", "show", "have", "give me", "paint", "stick", "drop",
             "see", "get")
VERBS = sorted(set(REMOVE_VERBS + REPLACE_VERBS + CHANGE_VERBS + PAINT_VERBS + PUT_VERBS + ("instead",)),
               key=len, reverse=True)

# Politeness and hesitation around a command (longest first, so "could you please" goes whole).
LEADING_FILLERS = sorted((
    "please", "kindly", "could you", "can you", "would you", "will you", "could you please", "can you please",
    "would you please", "would you mind", "would you kindly", "do you mind", "i want you to", "i'd like you to",
    "i would like you to", "i need you to", "i want to", "i'd like to", "i would like to", "i need to",
    "i wanna", "we need to", "we should", "you should", "let's", "lets", "let us", "go ahead and", "try to",
    "just", "now", "then", "also", "so", "okay", "ok", "um", "uh", "umm", "uhh", "er", "erm", "hmm", "hey",
    "and", "well", "alright", "all right", "right", "first", "firstly", "second", "secondly", "next",
    "finally", "lastly", "after that", "afterwards", "maybe", "perhaps", "quickly", "simply", "actually",
    "oh", "like", "you know", "i think", "i guess", "plus", "as well", "lastly", "and then", "yeah", "yes",
    "hi", "hello", "please could you", "please can you", "be so kind as to", "i'd love it if you could",
    "i would love it if you could", "it would be great if you could", "basically", "literally", "really",
    "kind of", "sort of", "you see", "listen", "look", "so basically", "what i want is to", "i need", "help me", "could we", "can we",
    "i wish you would", "i'd appreciate it if you could", "computer", "assistant", "also please", "try and",
), key=len, reverse=True)
TRAILING_FILLERS = sorted((
    "please", "for me", "thanks", "thank you", "thank you very much", "if you can", "if possible",
    "if you could", "if you don't mind", "right now", "now", "too", "as well", "also", "for me please",
    "thanks a lot", "cheers", "ok", "okay", "quickly", "completely", "entirely", "altogether", "instead",
    "real quick", "will you", "would you", "could you", "won't you", "please and thank you", "again",
), key=len, reverse=True)
MATERIALS = frozenset({"wooden", "wood", "metal", "metallic", "steel", "iron", "glass", "stone", "marble", "plastic",
                       "brick", "concrete", "paper", "cardboard", "ice", "icy", "crystal", "rusty", "woolen", "woollen",
                       "leather", "velvet", "denim", "furry", "fluffy", "chrome", "golden", "silver", "gold", "bronze",
                       "copper", "rubber", "ceramic", "porcelain", "clay", "wicker", "bamboo", "snowy", "transparent"})
SCENE_WORDS = r"(?:image|picture|photo|photograph|pic|scene|shot|frame|view|foto)"
DETERMINERS = ("the", "a", "an", "this", "that", "these", "those", "my", "our", "your", "his", "her", "their",
               "its", "some", "all the", "all of the", "all", "both", "both the", "any", "every", "each", "each of the")
PRONOUNS = ("it", "them", "that", "this", "this one", "that one", "those", "these", "him", "her", "they", "one")
IRREGULAR = {"made": "make", "took": "take", "taken": "take", "got": "get", "gotten": "get", "put": "put",
             "swapped": "swap", "swapping": "swap", "putting": "put", "getting": "get", "cutting": "cut",
             "dropping": "drop", "dropped": "drop", "stripping": "strip", "stripped": "strip", "setting": "set",
             "lost": "lose", "drew": "draw", "drawn": "draw", "hid": "hide", "hidden": "hide", "dyeing": "dye"}
PREPOSITIONS = r"(?:on|in|at|with|from|near|next|by|of|behind|under|below|above|beside|between|to|that|which|who)"

# What an unreadable utterance's error shows.
KNOWN_FORMS = (
    "remove | delete | erase | get rid of | take out  <object>",
    "replace | swap | exchange  <object> with <new object>",
    "change | turn | transform | convert | make  <object> into | to <new object>",
    "turn | make | paint | colour | recolour  <object> <colour>      (\"make the sky purple\")",
    "change the colour of <object> to <colour>",
    "put <new object> in place of <object>",
    "<object> should be <new object or colour>",
    "several in one sentence: \"remove the bicycle and make the sky purple\"",
)
