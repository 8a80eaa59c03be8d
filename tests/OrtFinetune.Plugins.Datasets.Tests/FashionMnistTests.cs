using OrtFinetune.Abstractions;
using Xunit.Abstractions;

namespace OrtFinetune.Plugins.Datasets.Tests;

/// <summary>Reads the real Fashion-MNIST from Debian's dataset-fashion-mnist package when it is installed.</summary>
public class FashionMnistTests
{
    private readonly ITestOutputHelper _out;
    public FashionMnistTests(ITestOutputHelper output) { _out = output; }

    public const string Dir = "/usr/share/datasets/fashion-mnist";

    private bool Present()
    {
        bool ok = File.Exists(Path.Combine(Dir, "train-images-idx3-ubyte.gz"));
        if (!ok) _out.WriteLine($"SKIPPED: {Dir} not found (install Debian's dataset-fashion-mnist package to run this test)");
        return ok;
    }

    [Fact]
    public void RealFilesHaveExpectedCountsLabelsAndPixels()
    {
        if (!Present()) return;
        var p = new FashionMnistProvider();
        var s = p.Open(new DatasetRequest { Seed = 0, ValidationFraction = 0.1 }); // default folder
        Assert.Equal(54000, s.Train.Count);
        Assert.Equal(6000, s.Validation.Count);
        Assert.Equal(10000, s.Test.Count);
        Assert.Equal("Ankle boot", s.Train.ClassNames[9]);
        Assert.Equal(28, s.NativeImageSize);

        // The full training file, through the subset views.
        var full = (InMemoryImageDataset)((SubsetDataset)s.Train).Inner;
        Assert.Equal(60000, full.Count);
        Assert.Equal((28, 28, 1), (full.Width, full.Height, full.Channels));
        var first = full.Get(0);
        Assert.Equal(9, first.Label);
        Assert.Equal(76247, first.Pixels.Sum(b => (int)b));
        Assert.Equal(new[] { 9, 0, 0, 3, 0, 2, 7, 2, 5, 5 }, Enumerable.Range(0, 10).Select(i => full.LabelAt(i)));
        var counts = new int[10];
        for (int i = 0; i < full.Count; i++) counts[full.LabelAt(i)]++;
        Assert.All(counts, c => Assert.Equal(6000, c));

        var test = (InMemoryImageDataset)((SubsetDataset)s.Test).Inner;
        var tc = new int[10];
        for (int i = 0; i < test.Count; i++) tc[test.LabelAt(i)]++;
        Assert.All(tc, c => Assert.Equal(1000, c));
    }
}
