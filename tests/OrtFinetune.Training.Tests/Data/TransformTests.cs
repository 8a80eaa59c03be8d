using OrtFinetune.Abstractions;
using OrtFinetune.Training.Data;

namespace OrtFinetune.Training.Tests.Data;

public class TransformTests
{
    private static ImageSample Img(int w, int h, int c, Func<int, int, int, int> f, string src = "test")
    {
        var px = new byte[w * h * c];
        for (int y = 0; y < h; y++) for (int x = 0; x < w; x++) for (int k = 0; k < c; k++) px[(y * w + x) * c + k] = (byte)f(x, y, k);
        return new ImageSample { Width = w, Height = h, Channels = c, Pixels = px, Label = 0, Source = src };
    }

    private static readonly float[] Zero = { 0f }, One = { 1f };

    [Fact]
    public void IdentityEvalAndNormalizationNumbers()
    {
        var s = Img(4, 4, 3, (x, y, k) => x * 10 + y * 50 + k);
        var p = new TransformPipeline(TransformOptions.Eval(4) with { Mean = TransformOptions.ImageNetMean, Std = TransformOptions.ImageNetStd });
        var t = p.Apply(s);
        Assert.Equal(3 * 16, t.Length);
        for (int k = 0; k < 3; k++)
            for (int y = 0; y < 4; y++)
                for (int x = 0; x < 4; x++)
                {
                    float expected = ((x * 10 + y * 50 + k) / 255f - TransformOptions.ImageNetMean[k]) / TransformOptions.ImageNetStd[k];
                    Assert.Equal(expected, t[k * 16 + y * 4 + x], 1e-5f);
                }
        // 0 and 255 with the default mean = std = 0.5 map to -1 and 1.
        var ends = new TransformPipeline(TransformOptions.Eval(2)).Apply(Img(2, 2, 1, (x, y, k) => x * 255));
        Assert.Equal(new[] { -1f, 1f, -1f, 1f }, ends.Take(4).Select(v => MathF.Round(v, 6)));
    }

    [Fact]
    public void GrayscaleToRgbAndRgbToGray()
    {
        var g = Img(3, 3, 1, (x, y, k) => 100 + x + y);
        var rgb = new TransformPipeline(TransformOptions.Eval(3)).Apply(g);
        for (int i = 0; i < 9; i++) { Assert.Equal(rgb[i], rgb[9 + i]); Assert.Equal(rgb[i], rgb[18 + i]); }
        var c = Img(2, 2, 3, (x, y, k) => k == 0 ? 255 : 0);
        var gray = new TransformPipeline(TransformOptions.Eval(2) with { Channels = 1, Mean = Zero, Std = One }).Apply(c);
        Assert.Equal(0.299f, gray[0], 5);
    }

    [Fact]
    public void HorizontalFlipMirrorsColumns()
    {
        var s = Img(5, 3, 3, (x, y, k) => x * 40 + y * 3 + k);
        var plain = new TransformPipeline(TransformOptions.Eval(3, 3) with { Size = 3 }).Apply(Img(3, 3, 3, (x, y, k) => x * 40 + y * 3 + k));
        var flipped = new TransformPipeline(TransformOptions.Eval(3) with { HorizontalFlip = 1.0 }).Apply(Img(3, 3, 3, (x, y, k) => x * 40 + y * 3 + k));
        for (int k = 0; k < 3; k++) for (int y = 0; y < 3; y++) for (int x = 0; x < 3; x++)
            Assert.Equal(plain[k * 9 + y * 3 + x], flipped[k * 9 + y * 3 + (2 - x)]);
        // With p = 0.5 some samples flip and some do not, reproducibly per (seed, epoch, index).
        var half = new TransformPipeline(TransformOptions.Eval(5) with { HorizontalFlip = 0.5, ResizeShorter = 3, Size = 3 });
        var outs = Enumerable.Range(0, 40).Select(i => half.Apply(s, 1, 0, i)).ToArray();
        Assert.Contains(outs, o => o[0] < o[2]);
        Assert.Contains(outs, o => o[0] > o[2]);
        for (int i = 0; i < 40; i++) Assert.Equal(outs[i], half.Apply(s, 1, 0, i));
    }

    [Fact]
    public void CenterCropGeometry()
    {
        Assert.Equal(new CropBox(2, 1, 2, 2), Transforms.CenterCrop(6, 4, 2, 2));
        Assert.Equal(2, Transforms.CenterCrop(5, 5, 2, 2).Left);  // round(1.5) = 2 (half to even, as Python)
        Assert.Equal(2, Transforms.CenterCrop(7, 7, 2, 2).Left);  // round(2.5) = 2
        Assert.Equal((224, 298), Transforms.ResizeShorterSide(300, 400, 224));
        Assert.Equal((298, 224), Transforms.ResizeShorterSide(400, 300, 224));
        // A 6x4 image, no resize (shorter side 4), center 2x2 crop: columns 2..3, rows 1..2.
        var s = Img(6, 4, 1, (x, y, k) => x + 10 * y);
        var t = new TransformPipeline(TransformOptions.Eval(2, 4) with { Mean = Zero, Std = One }).Apply(s);
        Assert.Equal(new[] { 12, 13, 22, 23 }, t.Take(4).Select(v => (int)MathF.Round(v * 255)));
    }

    [Fact]
    public void BilinearResizeMatchesTorchAlignCornersFalse()
    {
        // torch.nn.functional.interpolate([[0, 255]], size=4, mode="bilinear", align_corners=False) -> 0, 63.75, 191.25, 255.
        var s = Img(2, 2, 1, (x, y, k) => x * 255);
        var t = new TransformPipeline(TransformOptions.Eval(4) with { Mean = Zero, Std = One, Channels = 1 }).Apply(s);
        Assert.Equal(new[] { 0, 63.75, 191.25, 255 }, t.Take(4).Select(v => Math.Round(v * 255.0, 3)));
        // Downscale 4 -> 2: taps at 0.5 and 2.5.
        var d = Img(4, 4, 1, (x, y, k) => x * 80);
        var td = new TransformPipeline(TransformOptions.Eval(2) with { Mean = Zero, Std = One, Channels = 1 }).Apply(d);
        Assert.Equal(new[] { 40.0, 200.0 }, td.Take(2).Select(v => Math.Round(v * 255.0, 3)));
    }

    [Fact]
    public void SplitMix64MatchesTheReferenceGenerator()
    {
        // The first outputs of Vigna's splitmix64.c seeded with 0.
        var rng = new SplitMix64(0);
        Assert.Equal([16294208416658607535UL, 7960286522194355700UL, 487617019471545679UL], new[] { rng.NextUInt64(), rng.NextUInt64(), rng.NextUInt64() });
    }

    [Fact]
    public void RandomResizedCropGeometry()
    {
        for (int i = 0; i < 2000; i++)
        {
            var rng = new SplitMix64(SplitMix64.Hash(1, 2, i, 0));
            int w = 20 + i % 50, h = 30 + i % 17;
            var b = Transforms.RandomResizedCrop(w, h, ref rng, (0.08, 1.0), (3.0 / 4, 4.0 / 3));
            Assert.InRange(b.Left, 0, w - 1); Assert.InRange(b.Top, 0, h - 1);
            Assert.InRange(b.Left + b.Width, 1, w); Assert.InRange(b.Top + b.Height, 1, h);
            double frac = (double)b.Width * b.Height / (w * h);
            Assert.InRange(frac, 0.04, 1.0);
            if (b.Width < w || b.Height < h)
            {
                double ratio = (double)b.Width / b.Height;
                Assert.InRange(ratio, 0.5, 2.0); // rounding of small boxes widens the nominal 3/4..4/3
            }
        }
        // Impossible shapes fall back to a central crop at the nearest allowed ratio.
        var r = new SplitMix64(SplitMix64.Hash(0, 0, 0, 0));
        Assert.Equal(new CropBox(0, 49, 1, 1), Transforms.RandomResizedCrop(1, 100, ref r, (0.08, 1.0), (3.0 / 4, 4.0 / 3)));
        Assert.Equal(new CropBox(0, 0, 5, 5), Transforms.RandomResizedCrop(5, 5, ref r, (1.0, 1.0), (1.0, 1.0)));
    }

    [Fact]
    public void RandomPipelineIsReproduciblePerSeedEpochIndex()
    {
        var s = Img(40, 30, 3, (x, y, k) => (x * 7 + y * 13 + k * 50) % 256);
        var p = new TransformPipeline(TransformOptions.Train(16));
        Assert.True(p.IsRandom);
        Assert.Equal(p.Apply(s, 5, 1, 3), p.Apply(s, 5, 1, 3));
        Assert.NotEqual(p.Apply(s, 5, 1, 3), p.Apply(s, 5, 2, 3));
        Assert.NotEqual(p.Apply(s, 5, 1, 3), p.Apply(s, 5, 1, 4));
        Assert.NotEqual(p.Apply(s, 5, 1, 3), p.Apply(s, 6, 1, 3));
        var e = new TransformPipeline(TransformOptions.Train(16).ToEval());
        Assert.False(e.IsRandom);
    }

    [Fact]
    public void PaddedRandomCropPadsWithZeroPixels()
    {
        var s = Img(8, 8, 1, (x, y, k) => 255);
        var p = new TransformPipeline(new TransformOptions { Size = 8, RandomCropPadding = 4, Channels = 1, Mean = Zero, Std = One });
        bool sawPad = false;
        for (int i = 0; i < 50; i++)
        {
            var t = p.Apply(s, 0, 0, i);
            Assert.All(t, v => Assert.True(v == 0f || v == 1f));
            sawPad |= t.Contains(0f);
        }
        Assert.True(sawPad);
    }

    [Fact]
    public void MalformedSampleNamesItsSource()
    {
        var bad = new ImageSample { Width = 4, Height = 4, Channels = 3, Pixels = new byte[10], Label = 0, Source = "bad-file.png" };
        var e = Assert.Throws<ArgumentException>(() => new TransformPipeline(TransformOptions.Eval(4)).Apply(bad));
        Assert.Contains("bad-file.png", e.Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => new TransformPipeline(new TransformOptions { Channels = 2 }));
        Assert.Throws<ArgumentException>(() => new TransformPipeline(new TransformOptions { Mean = new[] { 1f, 2f } }));
    }
}
