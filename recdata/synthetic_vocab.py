"""Vocabulary of the synthetic catalogue: departments, subcategories, product words, brands.

Each subcategory holds ``nouns`` (product types), ``mods`` (modifiers that fit every noun of
the subcategory), ``attrs`` (attribute name -> values; the first attribute is appended to the
title) and ``uses`` (what the product is for, used in descriptions). Lists are written as
``"|"``-separated strings to keep the tables short. Brands are invented.
"""

from __future__ import annotations

SubcategoryVocab = dict[str, object]

DEPARTMENTS: dict[str, dict[str, SubcategoryVocab]] = {
    "Lab & Scientific": {
        "Microscopes": dict(
            nouns="compound microscope|stereo microscope|USB digital microscope|"
                  "pocket microscope|trinocular microscope",
            mods="LED|binocular|monocular|cordless|student|professional|zoom|achromatic",
            attrs={"magnification": "40X-1000X|20X-80X|50X-500X|100X-2000X",
                   "power": "110V|USB powered|battery powered"},
            uses="biology lab|classroom teaching|PCB inspection|coin collecting|cell slides"),
        "Lab Glassware": dict(
            nouns="borosilicate beaker set|Erlenmeyer flask|graduated cylinder|"
                  "volumetric flask|wash bottle|glass media bottle",
            mods="borosilicate|heavy wall|autoclavable|graduated|low form|heat resistant",
            attrs={"capacity": "50 ml|100 ml|250 ml|500 ml|1000 ml",
                   "pack size": "pack of 6|pack of 12|pack of 24"},
            uses="chemistry lab|school experiments|sample storage|home brewing"),
        "Pipettes & Liquid Handling": dict(
            nouns="adjustable micropipette|pipette tips|transfer pipettes|"
                  "serological pipette|bottle top dispenser|pipette filler",
            mods="single channel|8-channel|sterile|autoclavable|disposable|ergonomic",
            attrs={"volume": "0.5-10 ul|10-100 ul|100-1000 ul|1-5 ml",
                   "pack size": "pack of 96|pack of 500|pack of 1000"},
            uses="molecular biology|PCR setup|cell culture|sample dilution"),
        "Scales & Balances": dict(
            nouns="analytical balance|precision scale|digital pocket scale|"
                  "moisture analyzer|lab balance",
            mods="digital|high precision|backlit|calibrated|portable|stainless steel",
            attrs={"readability": "0.1 mg|1 mg|0.01 g|0.1 g",
                   "max load": "100 g|200 g|500 g|3000 g"},
            uses="weighing reagents|jewelry weighing|lab measurements|coffee brewing"),
        "Lab Safety": dict(
            nouns="nitrile gloves|safety goggles|lab coat|face shield|chemical apron",
            mods="powder free|anti fog|disposable|splash proof|flame resistant|latex free",
            attrs={"size": "small|medium|large|X-large",
                   "pack size": "box of 100|pack of 2|single"},
            uses="chemical handling|lab work|cleaning|food preparation"),
    },
    "Electronics": {
        "Headphones": dict(
            nouns="wireless earbuds|over-ear headphones|noise cancelling headphones|"
                  "sports earphones|gaming headset",
            mods="Bluetooth 5.3|active noise cancelling|waterproof|foldable|wireless|"
                 "low latency",
            attrs={"battery life": "20 hours|30 hours|40 hours|60 hours",
                   "colour": "black|white|navy blue|rose gold"},
            uses="commuting|running|online meetings|gaming|travel"),
        "Chargers & Cables": dict(
            nouns="USB-C charger|fast charging cable|wireless charging pad|power bank|"
                  "car charger|charging station",
            mods="GaN|compact|fast charging|magnetic|multi port|travel",
            attrs={"output": "20W|30W|65W|100W",
                   "colour": "black|white|graphite|blue"},
            uses="smartphones|laptops|tablets|travel"),
        "Smart Home": dict(
            nouns="smart plug|WiFi security camera|video doorbell|smart light bulb|"
                  "motion sensor|smart thermostat",
            mods="Alexa compatible|2K|night vision|voice controlled|outdoor|energy saving",
            attrs={"connectivity": "2.4 GHz WiFi|Zigbee|Bluetooth",
                   "pack size": "pack of 1|pack of 2|pack of 4"},
            uses="home security|home automation|energy monitoring|baby monitoring"),
        "Computer Accessories": dict(
            nouns="mechanical keyboard|wireless mouse|USB-C hub|laptop stand|"
                  "webcam|mouse pad",
            mods="ergonomic|RGB backlit|wireless|aluminium|adjustable|compact",
            attrs={"compatibility": "Windows and Mac|MacBook|Chromebook",
                   "colour": "black|space grey|white|silver"},
            uses="home office|gaming setups|video calls|programming"),
        "Cameras": dict(
            nouns="action camera|dash cam|instant camera|trail camera|360 camera",
            mods="dual screen|waterproof|wide angle|image stabilised|night vision|compact",
            attrs={"resolution": "1080p|2K|4K|5K",
                   "storage": "32 GB card included|64 GB card included|no card"},
            uses="vlogging|driving|wildlife watching|travel photography"),
    },
    "Home & Kitchen": {
        "Cookware": dict(
            nouns="non-stick frying pan|cast iron skillet|stainless steel saucepan|"
                  "grill pan|Dutch oven|wok",
            mods="non-stick|induction compatible|oven safe|PFOA free|tri-ply|enamelled",
            attrs={"diameter": "20 cm|24 cm|28 cm|30 cm",
                   "material": "cast iron|stainless steel|aluminium|ceramic"},
            uses="everyday cooking|searing steaks|stir fry|slow braising"),
        "Coffee & Tea": dict(
            nouns="pour over coffee maker|French press|electric kettle|cold brew coffee maker|"
                  "espresso machine|teapot",
            mods="gooseneck|stainless steel|programmable|glass|temperature control|insulated",
            attrs={"capacity": "0.6 l|1 l|1.5 l|1.7 l",
                   "colour": "matte black|brushed steel|white|copper"},
            uses="morning coffee|loose leaf tea|office kitchens|camping"),
        "Kitchen Storage": dict(
            nouns="glass food storage containers|vacuum canister set|spice jars|"
                  "produce saver containers|bento lunch boxes",
            mods="airtight|stackable|BPA free|leak proof|microwave safe|bamboo",
            attrs={"pack size": "set of 5|set of 10|set of 24",
                   "material": "glass|plastic|bamboo|stainless steel"},
            uses="meal prep|pantry organisation|leftovers|lunch boxes"),
        "Bedding": dict(
            nouns="duvet cover set|fitted sheet|memory foam pillow|mattress topper|"
                  "weighted blanket",
            mods="hypoallergenic|cooling|breathable|soft touch|organic|all season",
            attrs={"size": "single|double|queen|king",
                   "colour": "white|grey|sage green|navy"},
            uses="better sleep|hot sleepers|guest rooms|allergy sufferers"),
        "Small Appliances": dict(
            nouns="air fryer|countertop blender|pressure cooker|slow cooker|rice cooker|"
                  "stand mixer",
            mods="digital|compact|stainless steel|programmable|high speed|dishwasher safe",
            attrs={"capacity": "2 l|3.5 l|5.5 l|6 l",
                   "power": "800W|1200W|1500W|1800W"},
            uses="quick dinners|smoothies|batch cooking|baking"),
    },
    "Sports & Outdoors": {
        "Camping": dict(
            nouns="dome tent|sleeping bag|camping stove|headlamp|camping lantern|"
                  "inflatable sleeping pad",
            mods="ultralight|waterproof|rechargeable|4-season|compact|insulated",
            attrs={"weight": "350 g|800 g|1.5 kg|2.4 kg",
                   "colour": "olive|orange|grey|navy"},
            uses="backpacking|car camping|festivals|emergency kits"),
        "Cycling": dict(
            nouns="bike helmet|bike light set|bike lock|cycling gloves|bike pump|"
                  "bike repair kit",
            mods="USB rechargeable|lightweight|reflective|anti-theft|padded|portable",
            attrs={"colour": "black|hi-vis yellow|red|matte grey",
                   "weight": "90 g|250 g|400 g|1.1 kg"},
            uses="commuting|mountain biking|road cycling|kids' bikes"),
        "Fitness Equipment": dict(
            nouns="adjustable dumbbells|kettlebell|weight plates|medicine ball|"
                  "weighted vest|ankle weights",
            mods="non-slip|cast iron|heavy duty|rubber coated|compact|neoprene coated",
            attrs={"weight": "5 kg|10 kg|20 kg|24 kg",
                   "colour": "black|purple|teal|grey"},
            uses="home workouts|strength training|cross training|physiotherapy"),
        "Hiking": dict(
            nouns="hiking backpack|trekking poles|hydration bladder|hiking boots|"
                  "rain jacket",
            mods="waterproof|breathable|collapsible|lightweight|ventilated|carbon fibre",
            attrs={"colour": "forest green|charcoal|orange|blue",
                   "weight": "300 g|650 g|1.2 kg|1.6 kg"},
            uses="day hikes|multi-day treks|trail running|travel"),
        "Water Sports": dict(
            nouns="snorkel set|swim goggles|inflatable paddle board|swim fins|wetsuit",
            mods="anti fog|UV protection|leak proof|inflatable|quick dry|full face",
            attrs={"size": "S/M|L/XL|adult|junior",
                   "colour": "blue|black|clear|coral"},
            uses="snorkelling|lap swimming|kayaking|beach holidays"),
    },
    "Tools & Hardware": {
        "Power Tools": dict(
            nouns="cordless drill driver|impact driver|angle grinder|orbital sander|"
                  "circular saw|jigsaw",
            mods="brushless|cordless|variable speed|compact|heavy duty|LED work light",
            attrs={"battery": "2.0 Ah|4.0 Ah|5.0 Ah|tool only",
                   "voltage": "12V|18V|20V"},
            uses="DIY projects|woodworking|metalwork|renovation"),
        "Hand Tools": dict(
            nouns="screwdriver set|socket wrench set|combination spanner set|pliers set|"
                  "precision screwdriver kit|hex key set",
            mods="chrome vanadium|magnetic|ratcheting|insulated|precision|non-slip grip",
            attrs={"pieces": "6 pieces|24 pieces|40 pieces|108 pieces",
                   "material": "chrome vanadium steel|S2 steel|carbon steel"},
            uses="household repairs|car maintenance|electronics repair|furniture assembly"),
        "Fasteners": dict(
            nouns="wood screws assortment|wall anchors|hex bolts|wing nuts|drywall screws",
            mods="stainless steel|zinc plated|self tapping|galvanised|assorted|heavy duty",
            attrs={"size": "M3|M5|M8|#8 x 1 inch",
                   "pack size": "pack of 50|pack of 100|pack of 500"},
            uses="decking|shelving|drywall mounting|outdoor furniture"),
        "Measuring Tools": dict(
            nouns="laser distance meter|digital caliper|spirit level|tape measure|"
                  "steel ruler",
            mods="digital|self-levelling|magnetic|auto-ranging|stainless steel|backlit",
            attrs={"accuracy": "0.01 mm|0.5 mm|1 mm|2 mm",
                   "colour": "yellow|orange|red|black"},
            uses="construction|woodworking|metalwork|interior design"),
        "Soldering & Electrical": dict(
            nouns="soldering iron kit|soldering station|hot air rework station|"
                  "hot glue gun|desoldering station",
            mods="temperature controlled|digital display|ceramic heater|ESD safe|portable|"
                 "fast heating",
            attrs={"power": "60W|80W|110W|150W",
                   "voltage": "110V|220V"},
            uses="electronics repair|PCB assembly|crafts|wiring projects"),
    },
    "Office Supplies": {
        "Writing Instruments": dict(
            nouns="gel pens|fountain pen|mechanical pencil|highlighters|fine liner pens",
            mods="quick dry|retractable|fine point|smudge proof|refillable|assorted colour",
            attrs={"tip size": "0.38 mm|0.5 mm|0.7 mm|1.0 mm",
                   "pack size": "pack of 5|pack of 12|pack of 24"},
            uses="note taking|journaling|school|drawing"),
        "Paper & Notebooks": dict(
            nouns="spiral notebook|dotted journal|sticky notes|copy paper|index cards",
            mods="A5|hardcover|ruled|acid free|recycled|100 gsm",
            attrs={"sheets": "80 sheets|160 sheets|500 sheets|100 cards",
                   "colour": "black|kraft|pastel|white"},
            uses="bullet journaling|meeting notes|printing|studying"),
        "Desk Organization": dict(
            nouns="desk organizer|monitor riser|file folder set|drawer organizer|"
                  "cable management box",
            mods="mesh|bamboo|stackable|adjustable|metal|minimalist",
            attrs={"material": "steel mesh|bamboo|acrylic|PU leather",
                   "colour": "black|white|natural wood|grey"},
            uses="home office|school desks|reception areas|cable tidying"),
        "Printer Supplies": dict(
            nouns="ink cartridges|toner cartridge|ink refill kit|photo paper|printer paper",
            mods="high yield|compatible|glossy|remanufactured|XL|thermal",
            attrs={"yield": "300 pages|1200 pages|2500 pages|50 sheets",
                   "colour": "black|tri-colour|cyan magenta yellow|white"},
            uses="home printing|office printing|photo printing|shipping labels"),
        "Shipping & Mailing": dict(
            nouns="bubble mailers|shipping boxes|packing tape|thermal shipping labels|"
                  "poly mailers",
            mods="self seal|padded|heavy duty|waterproof|recyclable|tear resistant",
            attrs={"size": "6x10 inch|10x13 inch|4x6 inch|12x12x12 inch",
                   "pack size": "pack of 25|pack of 50|pack of 100|pack of 500"},
            uses="small business shipping|moving house|online sellers|returns"),
    },
    "Beauty": {
        "Skin Care": dict(
            nouns="vitamin C serum|hyaluronic acid moisturizer|mineral sunscreen|"
                  "gentle face cleanser|retinol night cream",
            mods="fragrance free|non-comedogenic|hydrating|SPF 50|oil free|vegan",
            attrs={"volume": "30 ml|50 ml|100 ml|200 ml",
                   "skin type": "dry skin|oily skin|sensitive skin|all skin types"},
            uses="daily skincare|anti ageing|acne prone skin|sun protection"),
        "Hair Care": dict(
            nouns="sulfate free shampoo|leave-in conditioner|hair mask|hair oil|dry shampoo",
            mods="sulfate free|argan oil|heat protecting|salon grade|volumizing|repairing",
            attrs={"volume": "250 ml|500 ml|1 l",
                   "hair type": "curly hair|fine hair|colour treated hair|all hair types"},
            uses="frizz control|daily styling|damaged hair|travel"),
        "Hair Styling Tools": dict(
            nouns="hair dryer|ceramic hair straightener|curling wand|hot air brush|"
                  "hair clipper",
            mods="ionic|cordless|salon grade|fast drying|tourmaline|lightweight",
            attrs={"power": "45W|1200W|1800W|2200W",
                   "colour": "black|rose gold|white|lilac"},
            uses="salon blowouts|everyday styling|curly hair|travel"),
        "Makeup": dict(
            nouns="liquid foundation|concealer|tinted moisturizer|setting powder|cream blush",
            mods="long lasting|waterproof|cruelty free|matte|lightweight|buildable",
            attrs={"shade": "ivory|warm beige|honey|deep espresso",
                   "finish": "matte|satin|dewy|shimmer"},
            uses="everyday makeup|evening looks|weddings|beginners"),
        "Fragrance": dict(
            nouns="eau de parfum|eau de toilette|body mist|perfume gift set|solid perfume",
            mods="floral|woody|citrus|long lasting|travel size|unisex",
            attrs={"volume": "10 ml|30 ml|50 ml|100 ml",
                   "scent": "vanilla|jasmine|sandalwood|bergamot"},
            uses="everyday wear|gifts|evenings out|travel"),
        "Nail Care": dict(
            nouns="gel nail polish set|press-on nails|nail polish|nail art stickers|top coat",
            mods="long lasting|quick dry|professional|glossy|chip resistant|non-toxic",
            attrs={"pack size": "set of 6|set of 12|single",
                   "colour": "nude|classic red|pastel|glitter"},
            uses="home manicures|salon use|pedicures|nail art"),
    },
}

BRANDS: dict[str, list[str]] = {
    "Lab & Scientific": ["LabQuest", "Optivue", "Sciento", "Kestrel Labs", "Veritas Scientific",
                         "AmScope Pro", "Bioclear"],
    "Electronics": ["Voltra", "Sonique", "Ankor", "Lumio", "Pixelon", "Zentech", "Arcwave"],
    "Home & Kitchen": ["Hearthwell", "Cuisora", "Brewcraft", "Nordhaus", "Linenly", "Panwise",
                       "Kitchora"],
    "Sports & Outdoors": ["Trailpeak", "Aquanova", "Ironform", "Summit Ridge", "Velora",
                          "Northpine", "Flexcore"],
    "Tools & Hardware": ["Torqmax", "Ironclad", "Fixwell", "Precisa", "Boltline", "Dewpoint Tools",
                         "Hartmann"],
    "Office Supplies": ["Paperloft", "Inkwise", "Deskery", "Scribo", "Packright", "Notely",
                        "Officio"],
    "Beauty": ["Lumiere", "Verdana Skin", "Glowlab", "Silk & Stone", "Aurelia", "Purebloom",
               "Nailique"],
}

DESCRIPTION_TEMPLATES: tuple[str, ...] = (
    "{brand} {noun}, {mods}, suited to {use_a} and {use_b}.",
    "{mods} {noun} for {use_a}; {attr_key}: {attr_value}. Backed by {brand}'s warranty.",
    "Designed for {use_a}: {mods} {noun} from {brand}, {attr_key} {attr_value}.",
    "{brand} {noun} for {use_a} and {use_b}. Features: {mods}; {attr_key} {attr_value}.",
)
