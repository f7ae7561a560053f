"""The hard set: 50 sentences where codec LMs skip or repeat words, in the spirit of RALL-E's 50
hard sentences (Xin et al. 2024, Sec. 4): tongue twisters, runs of repeated words, and long
sentences. Written for this project; the tongue twisters are traditional.

The TTS evaluation (benchmarks/tts_eval.py) reads them from the corpus's ``hard`` split, spoken by
training speakers; build the corpus with that split (the other splits as modalities/speech_corpus.py):

    python -m benchmarks.metrics.speech_hard --out runs/speech/corpus --n-train 6000
"""
from __future__ import annotations

from modalities.speech_corpus import main as build_corpus_cli

TONGUE_TWISTERS = [
    "She sells sea shells by the sea shore.",
    "Peter Piper picked a peck of pickled peppers.",
    "How much wood would a woodchuck chuck?",
    "Red lorry, yellow lorry, red lorry, yellow lorry.",
    "Unique New York, unique New York.",
    "A proper copper coffee pot.",
    "Fred fed Ted bread and Ted fed Fred bread.",
    "Six sick slick slim sycamore saplings.",
    "Betty bought a bit of better butter.",
    "Toy boat, toy boat, toy boat.",
    "Which witch switched the Swiss wristwatches?",
    "Black background, brown background.",
    "Greek grapes, Greek grapes, Greek grapes.",
    "Eleven benevolent elephants.",
    "Lesser leather never weathered wetter weather better.",
    "Truly rural, truly rural.",
    "The sixth sick sheik's sixth sheep is sick.",
]

REPEATED_WORDS = [
    "No no no no, I will not go.",
    "Go go go, run run run.",
    "The the the cat sat on the mat.",
    "Yes yes yes, I said yes.",
    "Stop, stop, stop the car now.",
    "Ha ha ha ha ha ha.",
    "Very very very very good.",
    "One one one two two two three three three.",
    "Come come, come away, come away.",
    "Well well well, what have we here?",
    "Never never never give up.",
    "Hello hello hello, is anybody there?",
    "Now now now, be quiet now.",
    "Again and again and again and again.",
    "Slowly slowly slowly the sun went down.",
    "Blue blue blue is my favourite colour.",
]

LONG_SENTENCES = [
    "The old man walked slowly down the long and winding road towards the little village by the river.",
    "When the rain finally stopped, the children ran outside to play in the puddles until their mother called them home.",
    "I would rather spend a quiet evening at home with a good book than go out to a noisy party.",
    "The captain ordered the crew to raise the sails before the storm reached the harbour at midnight.",
    "She opened the window, looked at the bright morning sky, and decided to walk to work instead of taking the bus.",
    "Every morning the baker gets up before dawn to make fresh bread for the people of the town.",
    "The museum will be closed on Monday, but it will open again on Tuesday morning at nine o'clock.",
    "After many years of hard work, the young doctor finally opened a small clinic in her home town.",
    "The train to the city was late again, so we waited on the cold platform for almost an hour.",
    "If you want to learn a new language, you should practise speaking it a little every single day.",
    "The cat jumped onto the kitchen table, knocked over a glass of milk, and ran away into the garden.",
    "My brother and I used to build sand castles on the beach every summer when we were young.",
    "The teacher asked the students to write a short story about the happiest day of their lives.",
    "We climbed to the top of the hill and watched the sun go down behind the distant mountains.",
    "The small boat drifted gently across the calm lake while the fisherman waited for a bite.",
    "He forgot his keys, his wallet and his phone, so he had to go back home before the meeting.",
    "The garden was full of roses, tulips and daisies, and the air smelled of fresh cut grass.",
]


def hard_sentences() -> list[str]:
    """The 50 hard sentences, in a fixed order."""
    out = TONGUE_TWISTERS + REPEATED_WORDS + LONG_SENTENCES
    assert len(out) == 50, len(out)
    return out


if __name__ == "__main__":
    build_corpus_cli(extra={"hard": hard_sentences()})
