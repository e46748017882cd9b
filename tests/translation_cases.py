"""Hand-written Japanese records with their English and Chinese translations, for the translation tests."""

from oie_jax.data.format import Record

# (record, {target: (translated text, translated entities in order of first appearance)})
CASES = [
    (Record("東京タワーは東京都港区にある電波塔である。", "NER",
            items=(("施設名", "東京タワー"), ("地名", "東京都港区")), id="tower", language="ja", subset="SCNM"),
     {"en": ("Tokyo Tower is a radio tower in Minato, Tokyo.", ("Tokyo Tower", "Minato, Tokyo")),
      "zh": ("东京塔是位于东京都港区的电波塔。", ("东京塔", "东京都港区"))}),
    (Record("山田太郎はトヨタ自動車に入社した。", "NER", items=(("人名", "山田太郎"), ("法人名", "トヨタ自動車")),
            id="joined", language="ja", subset="SCNM"),
     {"en": ("Taro Yamada joined Toyota Motor.", ("Taro Yamada", "Toyota Motor")),
      "zh": ("山田太郎加入了丰田汽车。", ("山田太郎", "丰田汽车"))}),
    (Record("夏目漱石は江戸で生まれた。", "Relation Extraction", label="文学", items=(("夏目漱石", "出生地", "江戸"),),
            id="soseki", language="ja", subset="TCREE"),
     {"en": ("Natsume Soseki was born in Edo.", ("Natsume Soseki", "Edo")),
      "zh": ("夏目漱石出生于江户。", ("夏目漱石", "江户"))}),
    (Record("2020年の選挙で田中が勝利した。", "Event Extraction", label="政治", items=(("選挙", "選挙", "田中"),),
            id="election", language="ja", subset="TCREE"),
     {"en": ("Tanaka won the 2020 election.", ("election", "Tanaka")),
      "zh": ("田中在2020年的选举中获胜。", ("选举", "田中"))}),
    (Record("この映画は素晴らしい。", "Sentiment Adj", label="ポジティブ", items=(("形容詞", "素晴らしい"),),
            id="movie", language="ja", subset="SCPOS:Adj"),
     {"en": ("This movie is wonderful.", ("wonderful",)), "zh": ("这部电影很精彩。", ("精彩",))}),
    (Record("今日は晴れです。", "NER", id="sunny", language="ja", subset="SCNM"),
     {"en": ("It is sunny today.", ()), "zh": ("今天是晴天。", ())}),
    (Record("京都駅は京都市下京区にある。", "NER", items=(("施設名", "京都駅"), ("地名", "京都市下京区")),
            id="station", language="ja", subset="SCNM"),
     {"en": ("Kyoto Station is in Shimogyo, Kyoto.", ("Kyoto Station", "Shimogyo, Kyoto")),
      "zh": ("京都站位于京都市下京区。", ("京都站", "京都市下京区"))}),
    (Record("鈴木一郎は大阪大学を卒業した。", "NER", items=(("人名", "鈴木一郎"), ("施設名", "大阪大学")),
            id="graduate", language="ja", subset="SCNM"),
     {"en": ("Ichiro Suzuki graduated from Osaka University.", ("Ichiro Suzuki", "Osaka University")),
      "zh": ("铃木一郎毕业于大阪大学。", ("铃木一郎", "大阪大学"))}),
]


def answer(translated_text: str, entities) -> str:
    """An answer in the layout the prompt asks for."""
    return "\n".join([f"TEXT: {translated_text}", *(f"ENTITY {i}: {e}" for i, e in enumerate(entities, 1))])
