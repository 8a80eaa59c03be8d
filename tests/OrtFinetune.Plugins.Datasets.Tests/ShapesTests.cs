using OrtFinetune.Abstractions;

namespace OrtFinetune.Plugins.Datasets.Tests;

public class ShapesTests
{
    private static DatasetSplits Open(int seed, Dictionary<string, string>? settings = null, int limit = 0) =>
        new ShapesProvider().Open(new DatasetRequest { Seed = seed, Limit = limit, Settings = settings ?? new() });

    [Fact]
    public void DefaultsAndDeterminism()
    {
        var a = Open(7); var b = Open(7); var c = Open(8);
        Assert.Equal(14_400, a.Train.Count);
        Assert.Equal(1600, a.Validation.Count);
        Assert.Equal(1000, a.Test.Count);
        Assert.Equal(ShapesProvider.DefaultClassCount, a.Train.ClassNames.Count);
        Assert.Equal((16, 6), (a.NativeImageSize, a.DefaultEpochs));
        Assert.Equal(24, Open(7, new() { ["image-size"] = "24" }).NativeImageSize);
        for (int i = 0; i < 20; i++)
        {
            var x = a.Train.Get(i);
            Assert.Equal((16, 16, 3), (x.Width, x.Height, x.Channels));
            Assert.Equal(x.Pixels, b.Train.Get(i).Pixels);
            Assert.Equal(x.Label, b.Train.Get(i).Label);
            Assert.Equal(a.Test.Get(i).Pixels, b.Test.Get(i).Pixels);
        }
        Assert.NotEqual(a.Test.Get(0).Pixels, c.Test.Get(0).Pixels);
        Assert.NotEqual(a.Test.Get(0).Pixels, a.Train.Get(0).Pixels);
        // Thread-safe and order-independent.
        var par = new byte[50][];
        Parallel.For(0, 50, i => par[i] = a.Test.Get(49 - i).Pixels);
        for (int i = 0; i < 50; i++) Assert.Equal(a.Test.Get(49 - i).Pixels, par[i]);
    }

    [Fact]
    public void SettingsAndBalance()
    {
        var s = Open(1, new() { ["image-size"] = "48", ["classes"] = "10", ["train-size"] = "1000", ["test-size"] = "100" });
        Assert.Equal(10, s.Test.ClassNames.Count);
        var counts = new int[10];
        for (int i = 0; i < s.Test.Count; i++) { var x = s.Test.Get(i); counts[x.Label]++; Assert.Equal(48, x.Width); }
        Assert.All(counts, c => Assert.Equal(10, c));
        var named = Open(1, new() { ["classes"] = "ring, x" });
        Assert.Equal(new[] { "ring", "x" }, named.Train.ClassNames);
        Assert.Throws<DatasetException>(() => Open(1, new() { ["classes"] = "blob,ring" }));
        Assert.Throws<DatasetException>(() => Open(1, new() { ["image-size"] = "abc" }));
        Assert.Throws<DatasetException>(() => Open(1, new() { ["classes"] = "1" }));
        Assert.Equal(50, Open(1, limit: 50).Train.Count);
    }

    [Fact]
    public void ShapesDifferVisibly()
    {
        // Without noise, every class draws a visible shape: a part of the image differs from the corner colour.
        var s = Open(3, new() { ["noise"] = "0", ["classes"] = "10", ["train-size"] = "2000", ["test-size"] = "400", ["image-size"] = "32" });
        float[] Mask(ImageSample x)
        {
            var m = new float[32 * 32];
            int r0 = x.Pixels[0], g0 = x.Pixels[1], b0 = x.Pixels[2];
            for (int p = 0; p < 32 * 32; p++)
            {
                int d = Math.Abs(x.Pixels[3 * p] - r0) + Math.Abs(x.Pixels[3 * p + 1] - g0) + Math.Abs(x.Pixels[3 * p + 2] - b0);
                m[p] = d > 60 ? 1 : 0;
            }
            return m;
        }
        for (int i = 0; i < 10; i++)
        {
            var m = Mask(s.Test.Get(i));
            Assert.InRange(m.Sum(), 20, 32 * 32 - 20);
        }
    }
}
