namespace OrtFinetune.Onnx;

/// <summary>
/// Arithmetic on <see cref="Dim"/> values: known numbers fold; symbols form canonical products
/// ("12*N", "H*W") so that e.g. N*12/12 gives back N; other combinations become opaque but
/// deterministic symbols ("(N+1)") or <see cref="Dim.Unknown"/> when nothing can be said.
/// Symbols read from a file (or made by Shape) are sizes, hence assumed non-negative.
/// </summary>
public static class SymDim
{
    /// <summary>A monomial coef * atom1 * atom2 ... (atoms sorted ordinally).</summary>
    readonly record struct Mono(long Coef, string[] Atoms)
    {
        public Dim ToDim()
        {
            if (Coef == 0) return new Dim(0);
            if (Atoms.Length == 0) return new Dim(Coef);
            var s = string.Join("*", Atoms);
            return new Dim(Coef == 1 ? s : $"{Coef}*{s}");
        }
    }

    static Mono? Parse(Dim d)
    {
        if (d.Value is long v) return new Mono(v, []);
        if (d.Symbol is null) return null;
        long coef = 1;
        var atoms = new List<string>();
        foreach (var f in SplitTop(d.Symbol, '*'))
        {
            if (long.TryParse(f, out var c)) coef = checked(coef * c);
            else atoms.Add(f);
        }
        atoms.Sort(StringComparer.Ordinal);
        return new Mono(coef, atoms.ToArray());
    }

    static List<string> SplitTop(string s, char sep)
    {
        var parts = new List<string>();
        int depth = 0, start = 0;
        for (int i = 0; i < s.Length; i++)
        {
            if (s[i] == '(') depth++;
            else if (s[i] == ')') depth--;
            else if (s[i] == sep && depth == 0) { parts.Add(s[start..i]); start = i + 1; }
        }
        parts.Add(s[start..]);
        return parts;
    }

    static bool SameAtoms(string[] a, string[] b) => a.AsSpan().SequenceEqual(b);

    /// <summary>a * b.</summary>
    public static Dim Mul(Dim a, Dim b)
    {
        if (a.Value == 0 || b.Value == 0) return new Dim(0);
        if (a.Value is long x && b.Value is long y) return new Dim(unchecked(x * y));
        if (a.Value == 1) return b;
        if (b.Value == 1) return a;
        var ma = Parse(a); var mb = Parse(b);
        if (ma is null || mb is null) return Dim.Unknown;
        var atoms = ma.Value.Atoms.Concat(mb.Value.Atoms).ToList();
        atoms.Sort(StringComparer.Ordinal);
        return new Mono(ma.Value.Coef * mb.Value.Coef, atoms.ToArray()).ToDim();
    }

    /// <summary>Integer division truncating toward zero (ONNX integer Div); symbolic only when exact.</summary>
    public static Dim Div(Dim a, Dim b)
    {
        if (a.Value is long x && b.Value is long y) return y == 0 ? Dim.Unknown : new Dim(x / y);
        if (b.Value == 1) return a;
        if (a.Value == 0) return new Dim(0);
        if (a.Symbol != null && a.Symbol == b.Symbol) return new Dim(1);
        var ma = Parse(a); var mb = Parse(b);
        if (ma is null || mb is null || mb.Value.Coef == 0 || ma.Value.Coef % mb.Value.Coef != 0) return Dim.Unknown;
        var atoms = ma.Value.Atoms.ToList();
        foreach (var t in mb.Value.Atoms) if (!atoms.Remove(t)) return Dim.Unknown;
        return new Mono(ma.Value.Coef / mb.Value.Coef, atoms.ToArray()).ToDim();
    }

    /// <summary>a + b.</summary>
    public static Dim Add(Dim a, Dim b)
    {
        if (a.Value is long x && b.Value is long y) return new Dim(unchecked(x + y));
        if (a.Value == 0) return b;
        if (b.Value == 0) return a;
        var ma = Parse(a); var mb = Parse(b);
        if (ma is null || mb is null) return Dim.Unknown;
        if (SameAtoms(ma.Value.Atoms, mb.Value.Atoms)) return new Mono(ma.Value.Coef + mb.Value.Coef, ma.Value.Atoms).ToDim();
        if (b.Value is long k) return k < 0 ? new Dim($"({a}-{-k})") : new Dim($"({a}+{k})");
        if (a.Value is long k2) return k2 < 0 ? new Dim($"({b}-{-k2})") : new Dim($"({b}+{k2})");
        var sa = a.ToString(); var sb = b.ToString();
        if (string.CompareOrdinal(sa, sb) > 0) (sa, sb) = (sb, sa);
        return new Dim($"({sa}+{sb})");
    }

    /// <summary>a - b.</summary>
    public static Dim Sub(Dim a, Dim b)
    {
        if (a.Value is long x && b.Value is long y) return new Dim(unchecked(x - y));
        if (b.Value == 0) return a;
        var ma = Parse(a); var mb = Parse(b);
        if (ma is null || mb is null) return Dim.Unknown;
        if (SameAtoms(ma.Value.Atoms, mb.Value.Atoms)) return new Mono(ma.Value.Coef - mb.Value.Coef, ma.Value.Atoms).ToDim();
        if (b.Value is long k) return Add(a, new Dim(-k));
        return new Dim($"({a}-{b})");
    }

    /// <summary>-a.</summary>
    public static Dim Neg(Dim a) => Mul(a, new Dim(-1));

    /// <summary>a mod b, when known.</summary>
    public static Dim Mod(Dim a, Dim b) =>
        a.Value is long x && b.Value is long y && y != 0 ? new Dim(x % y) : b.Value == 1 ? new Dim(0) : Dim.Unknown;

    /// <summary>max(a, b), when it can be told.</summary>
    public static Dim Max(Dim a, Dim b)
    {
        if (a.Value is long x && b.Value is long y) return new Dim(Math.Max(x, y));
        if (a.SameAs(b)) return a;
        if (b.Value is long k && k <= 0 && IsNonNegative(a)) return a;
        if (a.Value is long k2 && k2 <= 0 && IsNonNegative(b)) return b;
        return Dim.Unknown;
    }

    /// <summary>min(a, b), when it can be told.</summary>
    public static Dim Min(Dim a, Dim b)
    {
        if (a.Value is long x && b.Value is long y) return new Dim(Math.Min(x, y));
        if (a.SameAs(b)) return a;
        if (b.Value is long k && k <= 0 && IsNonNegative(a)) return b;
        if (a.Value is long k2 && k2 <= 0 && IsNonNegative(b)) return a;
        // an int64 "infinity" bound (torch uses INT64_MAX for open slices) is above any size
        if (b.Value is long big && big >= int.MaxValue && IsNonNegative(a)) return a;
        if (a.Value is long big2 && big2 >= int.MaxValue && IsNonNegative(b)) return b;
        return Dim.Unknown;
    }

    /// <summary>Known non-negative, or a size symbol (a product of atoms with positive coefficient, no subtraction).</summary>
    public static bool IsNonNegative(Dim d)
    {
        if (d.Value is long v) return v >= 0;
        if (d.Symbol is null) return false;
        if (d.Symbol.Contains('-')) return false;
        var m = Parse(d);
        return m is { Coef: >= 0 };
    }

    /// <summary>
    /// Equality of two dims as values: true/false when provable, null when unknown.
    /// </summary>
    public static bool? Equal(Dim a, Dim b)
    {
        if (a.Value is long x && b.Value is long y) return x == y;
        if (a.Symbol != null && a.Symbol == b.Symbol) return true;
        if (a.Value is long k && k < 0 && IsNonNegative(b)) return false;
        if (b.Value is long k2 && k2 < 0 && IsNonNegative(a)) return false;
        return null;
    }

    /// <summary>Product of all dims (element count), symbolic where possible.</summary>
    public static Dim Product(IEnumerable<Dim> dims)
    {
        Dim p = new(1);
        foreach (var d in dims) p = Mul(p, d);
        return p;
    }
}
