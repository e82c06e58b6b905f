/* Generator of the built-in corpus (see gen_corpus.h). Each paragraph follows one of a few templates
 * filled from word lists of a few hundred words; the templates carry structure a small byte-level
 * model can learn step by step: spelling and punctuation first, then word order, then facts that
 * repeat (categories, counting order, arithmetic that is always right, answers that copy the
 * question). Changing any list or template changes data/corpus.txt: regenerate it and commit both. */
#include "gen_corpus.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- output buffer and random numbers ---------------------------------------------------------- */

typedef struct gen {
    char *p;
    size_t len, cap;
    int oom;
    uint64_t state; /* splitmix64 */
} gen;

static void put(gen *g, const char *s)
{
    size_t n = strlen(s);
    if (g->oom) return;
    if (g->len + n + 1 > g->cap) {
        size_t cap = g->cap ? g->cap : 1 << 16;
        while (g->len + n + 1 > cap) cap *= 2;
        char *q = realloc(g->p, cap);
        if (!q) {
            g->oom = 1;
            return;
        }
        g->p = q;
        g->cap = cap;
    }
    memcpy(g->p + g->len, s, n + 1);
    g->len += n;
}

static void putf(gen *g, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void putf(gen *g, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    put(g, buf);
}

static uint64_t next_u64(gen *g)
{
    uint64_t z = (g->state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform integer in [0, n), n >= 1 (the modulo bias is irrelevant here and deterministic). */
static int rnd(gen *g, int n) { return (int)(next_u64(g) % (uint64_t)n); }

#define COUNT(a) ((int)(sizeof(a) / sizeof((a)[0])))
#define PICK(g, a) ((a)[rnd((g), COUNT(a))])

/* ---- word lists ----------------------------------------------------------------------------------- */

static const char *const names[] = {"Anna", "Ben",   "Clara", "David", "Emma",  "Felix", "Grace",  "Henry",
                                    "Iris", "Jack",  "Kate",  "Leo",   "Maya",  "Noah",  "Olive",  "Paul",
                                    "Rosa", "Sam",   "Tara",  "Victor", "Wendy", "Yusuf", "Zoe",   "Omar"};
static const char *const animals[] = {"cat",  "dog",  "fox",   "horse", "rabbit", "owl",   "goat",
                                      "duck", "mouse", "bear", "wolf",  "deer",   "frog",  "sheep",
                                      "crow", "lion", "tiger", "whale", "bee",    "hen"};
static const char *const objects[] = {"book",   "lamp",   "cup",    "key",     "box",   "coat",  "ball",  "map",
                                      "boat",   "kite",   "clock",  "hat",     "bag",   "chair", "table", "letter",
                                      "basket", "bell",   "drum",   "rope",    "candle", "ring", "shoe",  "brush",
                                      "spoon",  "bottle", "ladder", "blanket", "mirror", "wheel"};
static const char *const places[] = {"garden",  "forest", "kitchen", "river",  "market", "school",
                                     "library", "village", "harbor", "hill",   "station", "bakery",
                                     "field",   "bridge", "castle",  "farm",   "beach",  "museum",
                                     "park",    "tower",  "valley",  "cave",   "meadow", "island"};
static const char *const adjectives[] = {"small", "big",    "old",    "young",  "red",    "blue",    "green",
                                         "quiet", "loud",   "happy",  "tired",  "brave",  "clever",  "gentle",
                                         "shiny", "dusty",  "warm",   "cold",   "tall",   "short",   "bright",
                                         "dark",  "soft",   "heavy",  "light",  "strange", "lucky",  "busy",
                                         "careful", "kind"};
static const char *const moves[] = {"walked", "ran", "hurried", "wandered", "raced", "strolled", "climbed", "rode"};
/* Transitive verbs: present and past, kept in pairs so "will X" and "Xed" agree. */
static const char *const verbs[][2] = {
    {"find", "found"},   {"carry", "carried"}, {"see", "saw"},       {"open", "opened"}, {"paint", "painted"},
    {"build", "built"},  {"buy", "bought"},    {"sell", "sold"},     {"lose", "lost"},   {"clean", "cleaned"},
    {"fix", "fixed"},    {"bring", "brought"}, {"hide", "hid"},      {"take", "took"},   {"make", "made"},
    {"draw", "drew"},    {"want", "wanted"},   {"like", "liked"},    {"wash", "washed"}, {"mend", "mended"}};
/* Foods: singular and plural. */
static const char *const foods[][2] = {
    {"apple", "apples"}, {"pear", "pears"},   {"plum", "plums"},       {"carrot", "carrots"}, {"egg", "eggs"},
    {"loaf", "loaves"},  {"cake", "cakes"},   {"potato", "potatoes"},  {"onion", "onions"},   {"lemon", "lemons"},
    {"cherry", "cherries"}, {"peach", "peaches"}, {"tomato", "tomatoes"}, {"melon", "melons"}, {"pie", "pies"}};
static const char *const weathers[] = {"sunny", "rainy", "windy", "cloudy", "foggy", "snowy", "stormy", "clear"};
static const char *const days[] = {"Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"};
static const char *const months[] = {"January", "February", "March",     "April",   "May",      "June",
                                     "July",    "August",   "September", "October", "November", "December"};
static const int month_days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
static const char *const times[] = {"morning", "afternoon", "evening", "night"};
static const char *const cities[] = {"Northport", "Eastwick",  "Riverton", "Stonebridge", "Millford", "Ashdale",
                                     "Greenfield", "Lakeside", "Westmoor", "Fairhaven",   "Oakridge", "Brookhaven"};
static const char *const directions[] = {"north", "south", "east", "west"};
static const char *const ones[] = {"zero",    "one",     "two",       "three",    "four",     "five",    "six",
                                   "seven",   "eight",   "nine",      "ten",      "eleven",   "twelve",  "thirteen",
                                   "fourteen", "fifteen", "sixteen",  "seventeen", "eighteen", "nineteen"};
static const char *const tens[] = {"", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"};
static const char *const feelings[] = {"glad", "surprised", "proud", "sleepy", "hungry", "curious", "worried", "calm"};

/* n in words, 0 <= n <= 999. */
static void number_words(int n, char *out, size_t cap)
{
    char buf[96] = "";
    size_t k = 0;
    if (n >= 100) {
        k += (size_t)snprintf(buf + k, sizeof buf - k, "%s hundred", ones[n / 100]);
        n %= 100;
        if (n == 0) {
            snprintf(out, cap, "%s", buf);
            return;
        }
        k += (size_t)snprintf(buf + k, sizeof buf - k, " and ");
    }
    if (n < 20)
        snprintf(buf + k, sizeof buf - k, "%s", ones[n]);
    else if (n % 10 == 0)
        snprintf(buf + k, sizeof buf - k, "%s", tens[n / 10]);
    else
        snprintf(buf + k, sizeof buf - k, "%s-%s", tens[n / 10], ones[n % 10]);
    snprintf(out, cap, "%s", buf);
}

static const char *article(const char *word) { return strchr("aeiou", word[0]) ? "an" : "a"; }

/* ---- paragraph templates ------------------------------------------------------------------------- */

static void story(gen *g, int *chapter)
{
    /* Every random draw is its own statement: argument evaluation order is unspecified in C, and the
     * corpus must not depend on the compiler. */
    const char *who = PICK(g, names);
    const char *pet = PICK(g, animals);
    const char *adj = PICK(g, adjectives);
    const char *home = PICK(g, places);
    const char *obj = PICK(g, objects);
    if (rnd(g, 3) == 0) putf(g, "Chapter %d. The %s %s\n\n", (*chapter)++, adj, pet);
    putf(g, "%s had %s %s %s.", who, article(adj), adj, pet);
    int n = 4 + rnd(g, 4);
    for (int i = 0; i < n; i++) {
        const char *place = PICK(g, places);
        const char *obj2 = PICK(g, objects);
        const char *adj2 = PICK(g, adjectives);
        const char *when = PICK(g, times);
        const char *move = PICK(g, moves);
        const char *feel = PICK(g, feelings);
        const char *sky = PICK(g, weathers);
        const char *const *v = verbs[rnd(g, COUNT(verbs))];
        const char *const *f = foods[rnd(g, COUNT(foods))];
        int k = 2 + rnd(g, 9);
        switch (rnd(g, 9)) {
        case 0: putf(g, " Every %s, %s and the %s %s to the %s.", when, who, pet, move, place); break;
        case 1: putf(g, " One day the %s found %s %s %s near the %s.", pet, article(adj2), adj2, obj, home); break;
        case 2: putf(g, " \"Look at this %s!\" said %s.", obj, who); break;
        case 3: putf(g, " %s %s the %s and put it in the %s.", who, v[1], obj, obj2); break;
        case 4: putf(g, " The %s was %s, so %s gave it %s %s.", pet, feel, who, article(f[0]), f[0]); break;
        case 5: putf(g, " It was %s in the %s, and the %s did not want to leave.", sky, place, pet); break;
        case 6:
            putf(g, " \"Will you %s the %s?\" asked %s. \"Yes, I will %s it,\" said the %s.", v[0], obj2, who, v[0],
                 pet);
            break;
        case 7: putf(g, " They %s to the %s and back again before %s.", move, place, when); break;
        default: putf(g, " %s counted %d %s in the %s.", who, k, f[1], place); break;
        }
    }
    putf(g, " In the end %s and the %s went home to the %s.\n\n", who, pet, home);
}

static void arithmetic(gen *g)
{
    int n = 4 + rnd(g, 5);
    char wa[96], wb[96], wc[96];
    for (int i = 0; i < n; i++) {
        int a = rnd(g, 20);
        int b = rnd(g, 20);
        switch (rnd(g, 5)) {
        case 0:
            number_words(a, wa, sizeof wa);
            number_words(b, wb, sizeof wb);
            number_words(a + b, wc, sizeof wc);
            putf(g, "%s plus %s is %s.\n", wa, wb, wc);
            break;
        case 1:
            if (a < b) {
                int t = a;
                a = b;
                b = t;
            }
            number_words(a, wa, sizeof wa);
            number_words(b, wb, sizeof wb);
            number_words(a - b, wc, sizeof wc);
            putf(g, "%s minus %s is %s.\n", wa, wb, wc);
            break;
        case 2: putf(g, "%d + %d = %d\n", a * 5 + b, b * 3, a * 5 + b * 4); break;
        case 3: putf(g, "%d x %d = %d\n", a % 13, b % 13, (a % 13) * (b % 13)); break;
        default:
            number_words(a % 10, wa, sizeof wa);
            number_words(b % 10, wb, sizeof wb);
            number_words((a % 10) * (b % 10), wc, sizeof wc);
            putf(g, "%s times %s is %s.\n", wa, wb, wc);
            break;
        }
    }
    put(g, "\n");
}

static void counting(gen *g)
{
    char w[96];
    switch (rnd(g, 4)) {
    case 0: {
        int start = rnd(g, 90);
        int len = 4 + rnd(g, 6);
        put(g, "Counting:");
        for (int i = 0; i < len; i++) {
            number_words(start + i, w, sizeof w);
            putf(g, "%s %s", i ? "," : "", w);
        }
        put(g, ".\n\n");
        break;
    }
    case 1: {
        int step = 1 + rnd(g, 10);
        int start = rnd(g, 50);
        int len = 5 + rnd(g, 5);
        putf(g, "Counting by %d from %d:", step, start);
        for (int i = 0; i < len; i++) putf(g, " %d", start + step * i);
        put(g, ".\n\n");
        break;
    }
    case 2: {
        int d = rnd(g, 7);
        int len = 3 + rnd(g, 5);
        put(g, "The days go");
        for (int i = 0; i < len; i++) putf(g, "%s %s", i ? "," : "", days[(d + i) % 7]);
        putf(g, ", and after %s comes %s.\n\n", days[(d + len - 1) % 7], days[(d + len) % 7]);
        break;
    }
    default: {
        int m = rnd(g, 12);
        putf(g, "%s has %d days. After %s comes %s, and before it comes %s.\n\n", months[m], month_days[m], months[m],
             months[(m + 1) % 12], months[(m + 11) % 12]);
        break;
    }
    }
}

static void weather(gen *g)
{
    int m = rnd(g, 12);
    int d = 1 + rnd(g, month_days[m]);
    int hi = 2 + rnd(g, 30);
    int lo = hi - 3 - rnd(g, 8);
    const char *city = PICK(g, cities);
    const char *day = PICK(g, days);
    const char *sky = PICK(g, weathers);
    const char *dir = PICK(g, directions);
    int wind = 5 + rnd(g, 40);
    putf(g, "Weather for %s, %s %d. In %s it will be %s, with a high of %d degrees and a low of %d degrees.", day,
         months[m], d, city, sky, hi, lo);
    putf(g, " The wind will blow from the %s at %d kilometres per hour.", dir, wind);
    if (rnd(g, 2)) {
        const char *next = PICK(g, weathers);
        putf(g, " Tomorrow in %s will be %s.", city, next);
    }
    put(g, "\n\n");
}

static void market(gen *g)
{
    const char *who = PICK(g, names);
    const char *city = PICK(g, cities);
    const char *const *f = foods[rnd(g, COUNT(foods))];
    int price = 1 + rnd(g, 9);
    int count = 2 + rnd(g, 9);
    int have = price * count + rnd(g, 20);
    putf(g, "At the market in %s, one %s costs %d coins. %s bought %d %s and paid %d coins.", city, f[0], price, who,
         count, f[1], price * count);
    putf(g, " %s had %d coins, so %d coins were left.\n\n", who, have, have - price * count);
}

static void dialogue(gen *g)
{
    int ia = rnd(g, COUNT(names));
    int ib = (ia + 1 + rnd(g, COUNT(names) - 1)) % COUNT(names); /* two different people */
    const char *a = names[ia], *b = names[ib];
    int n = 2 + rnd(g, 3);
    for (int i = 0; i < n; i++) {
        const char *obj = PICK(g, objects);
        const char *place = PICK(g, places);
        const char *adj = PICK(g, adjectives);
        const char *const *v = verbs[rnd(g, COUNT(verbs))];
        switch (rnd(g, 3)) {
        case 0: putf(g, "%s: Where is the %s?\n%s: The %s is in the %s.\n", a, obj, b, obj, place); break;
        case 1: putf(g, "%s: Is the %s %s?\n%s: Yes, the %s is very %s.\n", a, obj, adj, b, obj, adj); break;
        default: putf(g, "%s: Did you %s the %s?\n%s: I %s it yesterday, in the %s.\n", a, v[0], obj, b, v[1], place); break;
        }
    }
    put(g, "\n");
}

static void definitions(gen *g)
{
    int n = 3 + rnd(g, 4);
    for (int i = 0; i < n; i++) {
        switch (rnd(g, 5)) {
        case 0: {
            const char *x = PICK(g, animals);
            putf(g, "%s %s is an animal. ", article(x), x);
            break;
        }
        case 1: {
            const char *x = PICK(g, places);
            putf(g, "%s %s is a place. ", article(x), x);
            break;
        }
        case 2: {
            const char *x = foods[rnd(g, COUNT(foods))][0];
            putf(g, "%s %s is something to eat. ", article(x), x);
            break;
        }
        case 3: {
            const char *x = PICK(g, objects);
            putf(g, "%s %s is a thing. ", article(x), x);
            break;
        }
        default: {
            const char *x = PICK(g, cities);
            putf(g, "%s is a town. ", x);
            break;
        }
        }
    }
    g->len--; /* the trailing space */
    g->p[g->len] = '\0';
    put(g, "\n\n");
}

static void letter(gen *g)
{
    int it = rnd(g, COUNT(names));
    int ifrom = (it + 1 + rnd(g, COUNT(names) - 1)) % COUNT(names);
    const char *to = names[it], *from = names[ifrom];
    const char *city = PICK(g, cities);
    const char *pet = PICK(g, animals);
    const char *sky = PICK(g, weathers);
    const char *place = PICK(g, places);
    const char *adj = PICK(g, adjectives);
    const char *obj = PICK(g, objects);
    const char *did = verbs[rnd(g, COUNT(verbs))][1];
    int m = rnd(g, 12);
    putf(g, "Dear %s,\n", to);
    putf(g, "I am writing to you from %s. It is %s here, and in %s the %s always sleeps in the %s.", city, sky,
         months[m], pet, place);
    putf(g, " Yesterday I %s %s %s %s.", did, article(adj), adj, obj);
    putf(g, " Please write back soon.\nYours, %s\n\n", from);
}

int corpus_generate(uint64_t seed, int64_t target_bytes, char **out, size_t *len)
{
    gen g = {NULL, 0, 0, 0, seed};
    put(&g, "");
    int chapter = 1;
    while (!g.oom && (int64_t)g.len < target_bytes) {
        int r = rnd(&g, 100);
        if (r < 30)
            story(&g, &chapter);
        else if (r < 42)
            arithmetic(&g);
        else if (r < 52)
            counting(&g);
        else if (r < 62)
            weather(&g);
        else if (r < 72)
            market(&g);
        else if (r < 84)
            dialogue(&g);
        else if (r < 93)
            definitions(&g);
        else
            letter(&g);
    }
    if (g.oom) {
        free(g.p);
        return -1;
    }
    *out = g.p;
    *len = g.len;
    return 0;
}
