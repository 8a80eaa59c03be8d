namespace OrtFinetune.Training.Tests.Support;

public class CompareTests
{
    [Fact]
    public void RelErrIsTheRelativeEuclideanDistance()
    {
        Assert.Equal(0.0, RelErr(new double[] { 3, 4 }, [3, 4]));
        Assert.Equal(1.0, RelErr(new double[] { 0, 0 }, [3, 4]));
        Assert.Equal(0.1, RelErr(new double[] { 3, 4.5 }, [3, 4]), 15);   // |(0, 0.5)| / |(3, 4)|
        Assert.Equal(0.1, RelErr(new float[] { 3, 4.5f }, [3, 4]), 15);
        Assert.ThrowsAny<Exception>(() => RelErr(new double[] { 1 }, [1, 2]));
    }
}
